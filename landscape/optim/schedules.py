"""Learning-rate schedules as plain values: ``lr_at(epoch, step_in_epoch, steps_per_epoch)``.

A schedule is a pure function of the position in training, so it pickles, prints as
JSON (``describe()``) and needs no torch scheduler state to resume: the trainer writes
``group["lr"] = schedule.lr_at(...)`` before every step. Epochs and steps are 0-based.

Build one with ``constant``, ``phases``, ``cosine``, ``linear`` or ``swa``.
"""

from __future__ import annotations

import math
from typing import Any

from landscape.errors import UserError


class LRSchedule:
    """A learning-rate schedule; build it with the factory functions of this module."""

    def __init__(self, kind: str, options: dict[str, Any], base: LRSchedule | None = None) -> None:
        self.kind = kind
        self.options = options  # JSON-able values only
        self.base = base  # the pre-SWA schedule, for kind "swa"

    def lr_at(self, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
        """The LR for step ``step_in_epoch`` (0-based) of epoch ``epoch`` (0-based)."""
        o = self.options
        if self.kind == "constant":
            return o["lr"]
        if self.kind == "linear":
            # Set once per epoch, as the SWA code sets it before each epoch's loop.
            t = epoch / o["horizon"]
            ratio = o["final_lr"] / o["lr"]
            if t <= o["flat_until"]:
                factor = 1.0
            elif t <= o["decay_until"]:
                factor = 1.0 - (1.0 - ratio) * (t - o["flat_until"]) / (o["decay_until"] - o["flat_until"])
            else:
                factor = ratio
            return o["lr"] * factor
        if self.kind == "phases":
            end = 0
            for epochs, lr in o["phases"]:
                end += epochs
                if epoch < end:
                    return lr
            return o["phases"][-1][1]  # past the last phase: keep its LR
        step = epoch * steps_per_epoch + step_in_epoch  # global 0-based step
        if self.kind == "cosine":
            total = o["epochs"] * steps_per_epoch
            progress = min(step / total, 1.0)
            return o["min_lr"] + (o["lr"] - o["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "swa":
            return self._swa_lr(epoch, step_in_epoch, steps_per_epoch, step)
        raise ValueError(f"unknown schedule kind {self.kind!r}")

    def _swa_lr(self, epoch: int, step_in_epoch: int, steps_per_epoch: int, step: int) -> float:
        o = self.options
        assert self.base is not None
        if epoch < o["swa_start"]:
            return self.base.lr_at(epoch, step_in_epoch, steps_per_epoch)
        since = step - o["swa_start"] * steps_per_epoch  # steps since SWA began
        # Both the anneal and the cycle start from the base schedule's LR where SWA begins.
        start_lr = self.base.lr_at(o["swa_start"], 0, steps_per_epoch)
        if o["cycle"] > 0:
            # Cyclic SWA (Izmailov et al., Algorithm 1): within each cycle the LR falls
            # linearly from alpha1 at its first step to alpha2 = swa_lr at its last step,
            # where the model is averaged.
            high = start_lr if o["cycle_lr_max"] is None else o["cycle_lr_max"]
            cycle_steps = o["cycle"] * steps_per_epoch
            if cycle_steps == 1:
                return o["swa_lr"]
            t = (since % cycle_steps) / (cycle_steps - 1)
            return (1.0 - t) * high + t * o["swa_lr"]
        anneal_steps = o["anneal_epochs"] * steps_per_epoch
        t = 1.0 if anneal_steps == 0 else min(since / anneal_steps, 1.0)
        return (1.0 - t) * start_lr + t * o["swa_lr"]

    def should_average(self, epoch: int) -> bool:
        """For ``swa``: whether to update the SWA average at the end of ``epoch``.

        Every epoch from ``swa_start`` on, or with ``cycle`` > 0 only at cycle ends (the
        epochs whose last step runs at ``swa_lr``). Always False for other kinds.
        """
        if self.kind != "swa" or epoch < self.options["swa_start"]:
            return False
        cycle = self.options["cycle"]
        return cycle == 0 or (epoch - self.options["swa_start"] + 1) % cycle == 0

    def phase_boundaries(self) -> list[int]:
        """Cumulative epoch counts at which each phase of a ``phases`` schedule ends.

        Phase p ends after ``T_1 + ... + T_p`` epochs, i.e. at the end of the 0-based
        epoch ``boundary - 1``: [80, 120, 160] for "80:0.1,40:0.01,40:0.001". Other kinds
        have no phases and return [].
        """
        if self.kind != "phases":
            return []
        ends, total = [], 0
        for epochs, _ in self.options["phases"]:
            total += epochs
            ends.append(total)
        return ends

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description, e.g. {"kind": "cosine", "lr": 0.1, ...}."""
        out: dict[str, Any] = {"kind": self.kind, **self.options}
        if self.kind == "phases":
            out["phases"] = [list(p) for p in self.options["phases"]]
        if self.base is not None:
            out["base"] = self.base.describe()
        return out

    def __repr__(self) -> str:
        return f"LRSchedule({self.describe()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LRSchedule) and self.describe() == other.describe()


def _positive_lr(lr: float, what: str) -> float:
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"{what} must be a positive number, got {lr}")
    return lr


def parse_phases(text: str) -> list[tuple[int, float]]:
    """Parse "EPOCHS:LR,EPOCHS:LR,..." such as "80:0.1,40:0.01,40:0.001"."""
    result = []
    for entry in text.split(","):
        parts = entry.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            epochs, lr = int(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(
                f"bad phase {entry.strip()!r} in {text!r}: expected EPOCHS:LR, e.g. 80:0.1"
            ) from None
        if epochs <= 0 or not (math.isfinite(lr) and lr > 0):
            raise UserError(
                f"bad phase {entry.strip()!r} in {text!r}: epochs and LR must be positive"
            )
        result.append((epochs, lr))
    return result


def constant(lr: float) -> LRSchedule:
    """The same LR at every step."""
    return LRSchedule("constant", {"lr": _positive_lr(lr, "learning rate")})


def phases(spec: list[tuple[int, float]]) -> LRSchedule:
    """Piecewise constant: ``[(T_1, lr_1), ...]``; after the last phase its LR stays."""
    if not spec:
        raise UserError("a phase schedule needs at least one phase")
    clean = []
    for epochs, lr in spec:
        if int(epochs) != epochs or epochs <= 0:
            raise UserError(f"phase length must be a positive integer, got {epochs}")
        clean.append((int(epochs), _positive_lr(lr, "phase learning rate")))
    return LRSchedule("phases", {"phases": clean})


def cosine(lr: float, epochs: int, min_lr: float = 0.0) -> LRSchedule:
    """Per-step cosine annealing from ``lr`` (first step) to ``min_lr`` (after ``epochs``)."""
    if epochs < 1:
        raise UserError(f"cosine schedule needs epochs >= 1, got {epochs}")
    if not 0.0 <= min_lr <= lr:
        raise UserError(f"cosine min_lr must be in [0, lr], got {min_lr}")
    return LRSchedule(
        "cosine",
        {"lr": _positive_lr(lr, "learning rate"), "epochs": int(epochs), "min_lr": float(min_lr)},
    )


def linear(lr: float, final_lr: float, horizon: float) -> LRSchedule:
    """The learning-rate schedule of the SWA paper's code (Izmailov et al. 2018, timgaripov/swa).

    Per epoch ``e`` (0-based), with ``t = e / horizon``: ``lr`` while ``t <= 0.5``, then
    linearly down to ``final_lr`` at ``t = 0.9``, then ``final_lr``. The SWA code uses
    ``horizon = swa_start`` and ``final_lr = swa_lr`` for an SWA run (so the LR has reached
    the SWA LR before averaging starts), and ``horizon = epochs``, ``final_lr = lr / 100``
    for its SGD baseline. The LR is constant within an epoch.
    """
    if not (horizon > 0 and math.isfinite(horizon)):
        raise UserError(f"linear schedule needs a positive horizon, got {horizon}")
    return LRSchedule("linear", {
        "lr": _positive_lr(lr, "learning rate"), "final_lr": _positive_lr(final_lr, "final learning rate"),
        "horizon": float(horizon), "flat_until": 0.5, "decay_until": 0.9,
    })


def swa(
    base: LRSchedule,
    swa_start: int,
    swa_lr: float,
    anneal_epochs: int = 0,
    cycle: int = 0,
    cycle_lr_max: float | None = None,
) -> LRSchedule:
    """``base`` until epoch ``swa_start``, then the SWA learning rate.

    Constant SWA (``cycle`` = 0): from the base LR at the first step of ``swa_start`` the LR
    goes linearly, per step, to ``swa_lr`` over ``anneal_epochs`` epochs (at once if 0),
    then stays at ``swa_lr``. Cyclic SWA (``cycle`` > 0, in epochs): each cycle falls
    linearly per step from ``cycle_lr_max`` (default: the base LR at ``swa_start``) at
    its first step to ``swa_lr`` at its last; average at cycle ends (``should_average``).
    """
    if swa_start < 0:
        raise UserError(f"swa_start must be >= 0, got {swa_start}")
    if anneal_epochs < 0 or cycle < 0:
        raise UserError(f"anneal_epochs and cycle must be >= 0, got {anneal_epochs}, {cycle}")
    if anneal_epochs and cycle:
        raise UserError("cyclic SWA (cycle > 0) has no annealing; set anneal_epochs=0")
    if cycle_lr_max is not None:
        cycle_lr_max = _positive_lr(cycle_lr_max, "cycle_lr_max")
    options = {
        "swa_start": int(swa_start),
        "swa_lr": _positive_lr(swa_lr, "swa_lr"),
        "anneal_epochs": int(anneal_epochs),
        "cycle": int(cycle),
        "cycle_lr_max": cycle_lr_max,
    }
    return LRSchedule("swa", options, base=base)

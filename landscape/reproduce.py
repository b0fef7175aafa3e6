"""`landscape reproduce`: the seed papers' claims, measured on the embedded data, with verdicts.

Each claim of the papers (DESIGN.md "References") is tested in a *setting*: a
:func:`landscape.compare.compare` of the optimizers it needs over several seeds, and, where
the claim is about flatness, the analyses that measure it at every seed's solutions. A claim
has one or more *effects*, each a number per seed whose sign the paper predicts (SWA minus
SGD in test accuracy: positive; lambda_max of SWA minus SGD: negative). Every effect gets its
mean over seeds, a paired 95% confidence interval and a verdict by one rule (:data:`RULE`):

* **reproduced**: the interval lies entirely on the side of 0 the paper claims;
* **not reproduced**: it lies entirely on the other side;
* **inconclusive**: it contains 0 (or fewer than two seeds were measured).

The differences are paired within a seed (every optimizer of a seed starts from the same
initialization and sees the same batches: landscape.compare), so the interval is the
Student-t interval of the per-seed differences, t(0.975, n-1) sd/sqrt(n).

Layout of ``OUT``::

    OUT/reproduce.json          the plan (claims, settings, seeds, epochs, how --budget chose them) and wall time
    OUT/<setting>/              a `landscape compare` directory (compare.h5, compare.csv, seed_<s>/...)
    OUT/<setting>/flatness/seed_<s>/   sharpness_a.h5, sharpness_b.h5, rays.h5, line.h5 (flatness settings)
    OUT/claims.json, OUT/claims.csv    the verdict table
    OUT/report.html             the verdict table first, then every setting's table and figures

Resuming. Training resumes through compare (finished runs are kept, unfinished ones
continue) and every analysis resumes from its ``.partial`` file, so the same command after a
kill continues where it stopped; the plan (seeds and epochs chosen for a ``--budget``) is
read back from ``reproduce.json``, so a resumed run measures the same thing.

Time. Before anything is trained, :func:`make_plan` times a few training steps and forward
passes of every setting's model on this machine and predicts the wall time of the whole
plan from them (:func:`estimate`); ``budget`` (seconds) makes it drop seeds (down to
:data:`MIN_SEEDS`) and then shorten every setting's training proportionally (down to
:data:`MIN_EPOCH_SCALE` of its epochs) until the prediction fits, and says what it chose.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from landscape.checkpoint import atomic_write_text
from landscape.errors import UserError

FORMAT = "landscape-reproduce/1"
CONFIDENCE = 0.95
RULE = ("reproduced: the paired 95% CI (Student t over seeds, n-1 degrees of freedom) of the effect lies "
        "entirely on the side of 0 the paper claims; not reproduced: entirely on the other side; "
        "inconclusive: the interval contains 0 (or fewer than 2 seeds)")
SEEDS = 5
MIN_SEEDS = 3
MIN_EPOCH_SCALE = 0.5
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


# ============================================================================ verdicts

def paired_interval(values: Any, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample std and Student-t interval of per-seed values (NaN seeds dropped)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half}


def verdict(ci_low: float, ci_high: float, sign: int) -> str:
    """The rule of :data:`RULE` for a claimed sign (+1: the effect is claimed > 0, -1: < 0)."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    lo, hi = sorted((sign * ci_low, sign * ci_high))
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "not reproduced"
    return "inconclusive"


def claim_verdict(verdicts: Sequence[str]) -> str:
    """One word for a claim of several effects: the common verdict when they agree, else
    "partly reproduced (k of n)"."""
    if not verdicts:
        return "inconclusive"
    if len(set(verdicts)) == 1:
        return verdicts[0]
    k = sum(v == "reproduced" for v in verdicts)
    return f"partly reproduced ({k} of {len(verdicts)})" if k else (
        "not reproduced" if "not reproduced" in verdicts and "reproduced" not in verdicts
        and all(v != "inconclusive" for v in verdicts) else "inconclusive")


# ============================================================================ settings and claims

@dataclass(frozen=True)
class Flatness:
    """The flatness analyses of a setting, run at every seed between two of its solutions."""

    a: tuple[str, str]  # (optimizer, "last" | "averaged"): SGD's solution
    b: tuple[str, str]  # SWA's
    subset: int = 2048  # train samples for lambda_max, trace, SAM sharpness and the rays
    rays: int = 5
    distances: tuple[float, float, int] = (0.0, 0.4, 11)  # filter-normalised, lo:hi:n
    euclid_distances: tuple[float, float, int] = (0.0, 12.0, 11)  # unit-norm directions (SWA Fig. 4)
    # The line A -> B on the whole test split; it reaches well past B, where the minimum
    # was found to lie in the sweeps (the SWA paper's Fig. 5 draws the same asymmetry).
    alphas: tuple[float, float, int] = (-0.5, 2.0, 26)
    trace_probes: int = 30
    lanczos_steps: int | None = None
    rho: float = 0.05


@dataclass(frozen=True)
class Stability:
    """lambda_max of one optimizer's iterate at the end of every constant-LR phase, at every seed:
    the solution SGD settled in at each learning rate of one run, against that rate's 2/lr."""

    optimizer: str = "sgd"
    subset: int = 2048  # train samples


@dataclass(frozen=True)
class Setting:
    """One comparison: the optimizers, their settings (TrainConfig fields) and what is measured."""

    name: str
    title: str
    optimizers: tuple[str, ...]
    config: Mapping[str, Any]
    flatness: Flatness | None = None
    stability: Stability | None = None
    tried: tuple[str, ...] = ()  # settings swept before this one was chosen, and what they gave


@dataclass(frozen=True)
class Effect:
    """One number per seed whose sign a paper predicts."""

    key: str
    text: str  # what is measured, with its unit
    sign: int  # +1: claimed > 0, -1: claimed < 0
    published: str  # the paper's number beside it (other data, models and budgets)
    setting: str
    measure: Callable[["Measured"], np.ndarray]
    digits: int = 2


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    paper: str
    statement: str
    effects: tuple[Effect, ...]

    @property
    def settings(self) -> list[str]:
        return list(dict.fromkeys(e.setting for e in self.effects))


@dataclass
class Measured:
    """What a run measured, by setting: the compare tables and the flatness numbers per seed."""

    tables: dict[str, Any] = field(default_factory=dict)  # setting -> landscape.compare.Table
    flatness: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # setting -> per seed
    stability: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # setting -> per seed

    def row(self, setting: str, optimizer: str, model: str = "last", cell: str = "") -> int:
        t = self.tables[setting]
        for i, (o, c, m) in enumerate(zip(t.optimizer, t.cell, t.model)):
            if (o, c, m) == (optimizer, cell, model):
                return i
        raise KeyError(f"{setting}: no row {optimizer} {model} {cell}")

    def acc(self, setting: str, optimizer: str, model: str = "last", cell: str = "") -> np.ndarray:
        """Test accuracy in percent, per seed."""
        return 100 * self.tables[setting].values["test_acc"][self.row(setting, optimizer, model, cell)]

    def flat(self, setting: str, key: str) -> np.ndarray:
        return np.array([s.get(key, math.nan) for s in self.flatness.get(setting, [])], dtype=np.float64)

    def phase(self, setting: str, key: str, p: int) -> np.ndarray:
        """``key`` ("lambda_max", "lr") at the end of LR phase ``p`` (0-based), per seed."""
        return np.array([s[key][p] if p < len(s[key]) else math.nan for s in self.stability.get(setting, [])],
                        dtype=np.float64)


def _acc_diff(setting: str, a: tuple[str, str], b: tuple[str, str]) -> Callable[[Measured], np.ndarray]:
    return lambda m: m.acc(setting, *a) - m.acc(setting, *b)


def _flat_diff(setting: str, key: str) -> Callable[[Measured], np.ndarray]:
    return lambda m: m.flat(setting, f"{key}_b") - m.flat(setting, f"{key}_a")


# --- the settings found by sweeping (README "The papers' claims, measured here" lists the ones tried)

NOISY, CLEAN = "noisy", "clean"

SETTINGS: dict[str, Setting] = {
    NOISY: Setting(
        name=NOISY,
        title="MNIST-1D with 25% of the train labels moved to another class (test labels clean), cnn1d with 32 "
              "channels, 40 epochs of momentum SGD in three LR phases",
        optimizers=("sgd", "phase", "lookahead", "sam", "asam"),
        # average: sgd's running average from epoch 21 is averaged SGD (the asgd optimizer is
        # sgd plus this average: one training gives both); sam's is averaged SAM.
        config={"model": "cnn1d", "model_options": {"channels": 32},
                "data_options": {"num_train": 4000, "num_test": 16000, "label_noise": 0.25},
                "epochs": 40, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                "schedule": "phases", "average": True, "eval_every": 10},
        stability=Stability("sgd"),
        tried=(
            "cnn1d (64 channels), clean labels, 20 epochs (README compare table, 5 seeds): averaged SGD −0.09, "
            "phase-wise −0.38, SAM −0.17, ASAM −1.15 points",
            "mlp (256, 256), clean labels, 40 epochs, 2-3 seeds: SAM +0.6 to +2.0, ASAM +0.9 to +1.0, averaged SGD "
            "±0.1, phase-wise −0.4 to −0.0, Lookahead −5 points (Lookahead far from converged)",
            "cnn1d (32 channels), 25% label noise, 30 epochs, 2 seeds: SAM +1.7 and −0.5, ASAM +0.6 and −1.7, "
            "averaged SGD +0.6 and +0.0, phase-wise +0.1 and −0.6 (γ0 = 0.97: +0.0 and −2.2)",
            "stability: SGD without momentum at constant lr 0.4, 0.2, 0.1 (clean labels, 15 epochs, 3 seeds, λ_max on "
            "1024 train samples): λ_max 5.8, 13.1, 19.8 against 2/lr = 5, 10, 20, rising as lr falls but at or above "
            "2/lr, far from a minimum (train loss 0.56 to 1.3); lr 0.8 and 1.6 did not train",
        ),
    ),
    CLEAN: Setting(
        name=CLEAN,
        title="MNIST-1D with clean labels, cnn1d with 32 channels, 30 epochs; SWA leaves SGD's schedule after the "
              "first LR phase and averages the iterates of constant lr 0.1 once per epoch",
        optimizers=("sgd", "swa"),
        config={"model": "cnn1d", "model_options": {"channels": 32},
                "data_options": {"num_train": 4000, "num_test": 16000},
                "epochs": 30, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
                "schedule": "phases", "swa_start": 16, "swa_lr": 0.1, "eval_every": 10},
        flatness=Flatness(a=("sgd", "last"), b=("swa", "averaged")),
        tried=(
            "cnn1d (32 channels), 25% label noise, 40 epochs, SWA from epoch 21 at lr 0.01, 3 seeds: SWA +1.0, +0.7, "
            "+0.9 points, flatter than SGD on λ_max, trace and SAM sharpness by 3-10%, rays within 2%",
            "the same with SWA at lr 0.05 (from epoch 16 of 30 or 21 of 40): SWA −0.5 to +0.3 points; its average "
            "fits the noisy labels more than SGD (lower train loss) and is sharper by trace, SAM sharpness and rays",
            "cnn1d (32 channels, BatchNorm), 25% label noise, 20 epochs, SWA at lr 0.05 (1 seed): lower λ_max, "
            "higher trace, SAM sharpness and narrower rays than SGD",
        ),
    ),
}
PHASES = 3  # the default schedule: half, quarter, quarter of the epochs at lr, lr/10, lr/100


def _stability_effects(setting: str = NOISY) -> list[Effect]:
    effects = []
    for p in range(PHASES):
        effects.append(Effect(
            f"lambda_below_2_over_lr[phase {p + 1}]",
            f"λ_max − 2/lr of SGD at the end of LR phase {p + 1} (lr = lr₀/{10 ** p})", -1,
            "λ_max ≤ 2/lr (linear stability of GD; SGD's noise only lowers the bound, Wu et al. 2018)", setting,
            (lambda m, p=p: m.phase(setting, "lambda_max", p) - 2 / m.phase(setting, "lr", p)), 3))
    for p in range(PHASES - 1):
        effects.append(Effect(
            f"lambda_rises[phase {p + 1}->{p + 2}]",
            f"λ_max at the end of LR phase {p + 2} minus at the end of phase {p + 1} (lr ÷ 10)", +1,
            "rises toward 2/lr as lr falls (the stability lecture)", setting,
            (lambda m, p=p: m.phase(setting, "lambda_max", p + 1) - m.phase(setting, "lambda_max", p)), 3))
    return effects


CLAIMS: dict[str, Claim] = {c.key: c for c in (
    Claim("asgd", "Averaged SGD beats SGD", "Nitanda, Kikuchi, Maeda, Wu, AISTATS 2024",
          "the running average of SGD's iterates has higher test accuracy than SGD's last iterate, and than SAM", (
              Effect("asgd_vs_sgd", "test acc. of averaged SGD − SGD (points)", +1,
                     "+0.63 (CIFAR-10 ResNet-50: 95.95 → 96.58); +1.30 (CIFAR-100: 80.83 → 82.13)", NOISY,
                     _acc_diff(NOISY, ("sgd", "averaged"), ("sgd", "last"))),
              Effect("asgd_vs_sam", "test acc. of averaged SGD − SAM (points)", +1,
                     "+0.55 (CIFAR-10 ResNet-50, ASGD with step m: 96.89 vs SAM 96.34)", NOISY,
                     _acc_diff(NOISY, ("sgd", "averaged"), ("sam", "last"))),
          )),
    Claim("phase", "Phase-wise aggregation beats SGD and Lookahead", "Kobayashi, Tables 1-2",
          "starting every LR phase from the EMA of the previous phase's epochs raises test accuracy over SGD "
          "and over Lookahead", (
              Effect("phase_vs_sgd", "test acc. of phase-wise − SGD (points)", +1,
                     "+0.90 (CIFAR-100 ResNet34, error 22.62 → 21.72); +0.24 (CIFAR-10 ResNet34)", NOISY,
                     _acc_diff(NOISY, ("phase", "last"), ("sgd", "last"))),
              Effect("phase_vs_lookahead", "test acc. of phase-wise − Lookahead (points)", +1,
                     "+0.40 (CIFAR-100 ResNet34, 22.12 → 21.72); +0.32 (CIFAR-10 ResNet34)", NOISY,
                     _acc_diff(NOISY, ("phase", "last"), ("lookahead", "last"))),
          )),
    Claim("swa", "SWA beats SGD and its solution is flatter", "Izmailov et al., UAI 2018 (Figs 4-5); the lectures",
          "SWA's average has higher test accuracy than SGD's solution, a lower top Hessian eigenvalue and trace, "
          "is wider along random rays, and the test loss along the SGD → SWA line is lowest nearer SWA", (
              Effect("swa_vs_sgd", "test acc. of SWA − SGD (points)", +1,
                     "+1.36 (CIFAR-100 VGG-16, 72.55 → 73.91); +0.34 (CIFAR-10 VGG-16)", CLEAN,
                     _acc_diff(CLEAN, ("swa", "averaged"), ("sgd", "last"))),
              Effect("swa_lambda_max", "λ_max(SWA) − λ_max(SGD), train loss", -1,
                     "lower (lectures: SWA and SAM find minima of lower curvature; no number)", CLEAN,
                     _flat_diff(CLEAN, "lambda_max"), 3),
              Effect("swa_trace", "Hessian trace(SWA) − trace(SGD), train loss", -1,
                     "lower (no number)", CLEAN, _flat_diff(CLEAN, "trace"), 1),
              Effect("swa_width", "ray width(SWA) − ray width(SGD), filter-normalised distance at train-loss rise 0.1",
                     +1, "wider (SWA Fig. 4: every ray from SWA rises later than from SGD)", CLEAN,
                     _flat_diff(CLEAN, "width"), 3),
              Effect("swa_width_euclid", "ray width(SWA) − ray width(SGD), Euclidean distance (unit-norm directions, "
                     "as SWA Fig. 4) at train-loss rise 0.1", +1, "wider (SWA Fig. 4)", CLEAN,
                     _flat_diff(CLEAN, "width_euclid"), 2),
              Effect("swa_line_minimum", "α of the test-loss minimum on (1−α)·SGD + α·SWA, minus 0.5", +1,
                     "> 0: the minimum sits near SWA (SWA Fig. 5: SGD lies at the edge of the basin)", CLEAN,
                     (lambda m: m.flat(CLEAN, "alpha_min") - 0.5), 3),
          )),
    Claim("sam", "SAM and ASAM beat SGD", "Foret et al., ICLR 2021; Kwon et al., ICML 2021 (lecture table)",
          "sharpness-aware minimization, plain and adaptive, raises test accuracy over SGD", (
              Effect("sam_vs_sgd", "test acc. of SAM − SGD (points)", +1,
                     "+1.30 (CIFAR-100 ResNet-20: 69.76 → 71.06)", NOISY, _acc_diff(NOISY, ("sam", "last"), ("sgd", "last"))),
              Effect("asam_vs_sgd", "test acc. of ASAM − SGD (points)", +1,
                     "+1.64 (CIFAR-100 ResNet-20: 69.76 → 71.40)", NOISY, _acc_diff(NOISY, ("asam", "last"), ("sgd", "last"))),
          )),
    Claim("stability", "λ_max sits at or below 2/lr and rises toward it as lr falls",
          "the SGD stability lecture (Wu et al. 2018)",
          "SGD's solutions are linearly stable: λ_max ≤ 2/lr at the learning rate that found them, and a smaller "
          "learning rate lets SGD settle in sharper places", tuple(_stability_effects())),
)}

CLAIM_ORDER = tuple(CLAIMS)


# ============================================================================ the plan

QUICK: dict[str, Any] = {
    # A smoke run of the whole machinery in about a minute: tiny data and models, few
    # epochs, 2 seeds. Its verdicts mean nothing; the files, resuming and the report are real.
    "seeds": 2, "epochs": 4, "data": {"num_train": 256, "num_test": 256}, "model_options": {"channels": 8},
    "flatness": {"subset": 128, "rays": 2, "distances": (0.0, 1.0, 4), "euclid_distances": (0.0, 4.0, 4),
                 "alphas": (-0.2, 1.2, 5),
                 "trace_probes": 6, "lanczos_steps": 8},
    "stability_subset": 128,
}


@dataclass
class PlannedSetting:
    """A setting as it will run: its compare config, seeds and what the budget left of it."""

    setting: Setting
    config: Any  # landscape.train.TrainConfig
    seeds: int
    epoch_scale: float
    flatness: Flatness | None
    stability: Stability | None
    predicted_seconds: float = math.nan


@dataclass
class Plan:
    claims: list[str]
    settings: list[PlannedSetting]
    out: Path
    seeds: int
    epoch_scale: float
    quick: bool
    predicted_seconds: float
    timing: dict[str, Any]
    budget: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        return {"claims": self.claims, "seeds": self.seeds, "epoch_scale": self.epoch_scale, "quick": self.quick,
                "predicted_seconds": round(self.predicted_seconds, 1), "budget": self.budget,
                "settings": {p.setting.name: {"optimizers": list(p.setting.optimizers), "epochs": p.config.epochs,
                                              "seeds": p.seeds, "config": _plain_config(p.config)}
                             for p in self.settings}}


def _plain_config(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def parse_claims(names: Sequence[str] | str) -> list[str]:
    """``all`` or claim keys (comma- or space-separated) -> claim keys in the canonical order."""
    if isinstance(names, str):
        names = [names]
    wanted: list[str] = []
    for item in names:
        for name in str(item).replace(",", " ").split():
            name = name.strip().lower()
            if name == "all":
                wanted += list(CLAIM_ORDER)
            elif name in CLAIMS:
                wanted.append(name)
            else:
                raise UserError(f"unknown claim {name!r}; choose from all, {', '.join(CLAIM_ORDER)}")
    if not wanted:
        raise UserError(f"no claim given; choose from all, {', '.join(CLAIM_ORDER)}")
    return [c for c in CLAIM_ORDER if c in wanted]


def _train_config(setting: Setting, epochs_scale: float, quick: bool, device: str) -> Any:
    from landscape.train import TrainConfig

    cfg = dict(setting.config)
    cfg["data_options"] = dict(cfg.get("data_options") or {})
    cfg["model_options"] = dict(cfg.get("model_options") or {})
    epochs = int(cfg.get("epochs", 20))
    if quick:
        cfg["data_options"].update(QUICK["data"])
        if cfg.get("model", "cnn1d") == "cnn1d":
            cfg["model_options"].update(QUICK["model_options"])
        else:
            cfg["model_options"]["widths"] = [16, 16]
        new_epochs = QUICK["epochs"]
    else:
        new_epochs = max(2, int(round(epochs * epochs_scale)))
    # Epoch counts that depend on the length scale with it (phases, swa_start and avg_start
    # left unset scale by themselves: TrainConfig.resolved()).
    for key in ("swa_start", "avg_start"):
        if cfg.get(key) is not None:
            cfg[key] = max(1, min(new_epochs, int(round(cfg[key] * new_epochs / epochs))))
    cfg["epochs"] = new_epochs
    return TrainConfig(optimizers=list(setting.optimizers), device=device, **cfg)


def _quick_flatness(f: Flatness | None) -> Flatness | None:
    return None if f is None else replace(f, **QUICK["flatness"])


def make_plan(claims: Sequence[str] | str = "all", out: str | Path = "runs/reproduce", *, seeds: int | None = None,
              budget: float | None = None, quick: bool = False, device: str = "auto",
              timing: dict[str, Any] | None = None) -> Plan:
    """What will run, and how long it should take here (times a few steps of every model)."""
    keys = parse_claims(claims)
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2):
        raise UserError(f"--seeds must be an integer >= 2 (a confidence interval needs two), got {seeds!r}")
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise UserError(f"--budget must be a positive number of seconds, got {budget!r}")
    if budget is not None and seeds is not None:
        raise UserError("give --seeds or --budget, not both (--budget chooses the seeds)")
    names = list(dict.fromkeys(s for k in keys for s in CLAIMS[k].settings))
    settings = [SETTINGS[n] for n in names]
    n_seeds = QUICK["seeds"] if quick and seeds is None else (seeds or SEEDS)
    timing = timing if timing is not None else measure_costs(settings, quick=quick, device=device)

    def planned(n: int, scale: float) -> list[PlannedSetting]:
        out_ = []
        for s in settings:
            stability = s.stability
            if quick and stability is not None:
                stability = replace(stability, subset=QUICK["stability_subset"])
            p = PlannedSetting(s, _train_config(s, scale, quick, device), n, scale,
                               _quick_flatness(s.flatness) if quick else s.flatness, stability)
            p.predicted_seconds = estimate(p, timing)
            out_.append(p)
        return out_

    plan_settings = planned(n_seeds, 1.0)
    total = timing.get("startup", 0.0) + sum(p.predicted_seconds for p in plan_settings)
    scale, record = 1.0, None
    if budget is not None and not quick:
        chosen = None
        for n in range(n_seeds, MIN_SEEDS - 1, -1):
            ps = planned(n, 1.0)
            t = timing.get("startup", 0.0) + sum(p.predicted_seconds for p in ps)
            if t <= budget:
                chosen = (n, 1.0, ps, t)
                break
        if chosen is None:
            # Shorter training at MIN_SEEDS: the largest scale that fits (cost is about linear in it).
            for step in range(20, int(MIN_EPOCH_SCALE * 20) - 1, -1):
                s_ = step / 20
                ps = planned(MIN_SEEDS, s_)
                t = timing.get("startup", 0.0) + sum(p.predicted_seconds for p in ps)
                if t <= budget:
                    chosen = (MIN_SEEDS, s_, ps, t)
                    break
        if chosen is None:
            ps = planned(MIN_SEEDS, MIN_EPOCH_SCALE)
            least = timing.get("startup", 0.0) + sum(p.predicted_seconds for p in ps)
            raise UserError(f"--budget {budget:g}: even {MIN_SEEDS} seeds and {MIN_EPOCH_SCALE:.0%} of the epochs "
                            f"need about {least / 60:.0f} min here (measured); give at least {math.ceil(least)} s "
                            "or fewer claims")
        n_seeds, scale, plan_settings, total = chosen
        record = {"seconds": budget, "seeds": n_seeds, "epoch_scale": scale,
                  "rule": f"{SEEDS} seeds down to {MIN_SEEDS} first, then every setting's epochs scaled down to "
                          f"{MIN_EPOCH_SCALE:.0%}, until the predicted time fits"}
    return Plan(keys, plan_settings, Path(out), n_seeds, scale, quick, total, timing, record)


# ============================================================================ time

def _cost_key(cfg: Any) -> str:
    return json.dumps({"model": cfg.model, "model_options": cfg.model_options, "data": cfg.data_options,
                       "batch": cfg.batch_size}, sort_keys=True)


def measure_costs(settings: Sequence[Setting], *, quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """Seconds per training step and per forward sample of every setting's model, here and now.

    For every model the trainer itself runs three epochs of sgd in a temporary directory
    (its checkpoints, scoring and bookkeeping included); the second epoch, which scores the
    test split only, gives the cost of a plain epoch, and a forward pass over 2048 test
    samples the cost of scoring one sample. On a busy shared machine this is what the run
    will see, so the prediction includes the load at the time it is made. ``startup`` is
    the one-time cost of the first optimizer of the process (torch imports its compiler
    stack then).
    """
    import tempfile

    import torch

    from landscape.data import load_dataset
    from landscape.device import resolve_device
    from landscape.models import build_model
    from landscape.train import model_spec, train

    t0 = time.perf_counter()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the one-time import, timed apart
    out: dict[str, Any] = {"startup": time.perf_counter() - t0, "models": {}}
    for s in settings:
        cfg = _train_config(s, 1.0, quick, device).resolved()
        key = _cost_key(cfg)
        if key in out["models"]:
            continue
        dev = resolve_device(cfg.device)
        t1 = time.perf_counter()
        data = load_dataset(cfg.dataset, device=dev, **cfg.data_options)
        load = time.perf_counter() - t1
        stamps: list[float] = []

        def hook(event: dict[str, Any]) -> None:
            if "epoch_done" in event:
                stamps.append(time.perf_counter())

        probe = replace(cfg, optimizers=["sgd"], epochs=3, phases=None, swa_start=None, avg_start=None,
                        average=False, eval_every=10, seed=0)
        with tempfile.TemporaryDirectory(prefix="landscape-probe-") as tmp:
            train(probe, Path(tmp) / "run", progress=hook)
        epoch = stamps[1] - stamps[0]  # epoch 2: steps, the test split, checkpoints
        spec = model_spec(cfg, data)
        torch.manual_seed(0)
        model = build_model(spec["name"], **spec["kwargs"]).to(dev).eval()
        xe = data.test.x[: min(2048, len(data.test))]
        with torch.inference_mode():
            model(xe)
            t1 = time.perf_counter()
            model(xe)
            fwd = (time.perf_counter() - t1) / len(xe)
        steps = math.ceil(len(data.train) / cfg.batch_size)
        # What is not scoring is charged to the steps (bookkeeping included), so SAM's second
        # gradient doubles a little more than it costs: a prediction on the safe side.
        step = max(epoch - len(data.test) * fwd, 0.25 * epoch) / steps
        out["models"][key] = {"step": step, "forward_per_sample": fwd, "load": load, "epoch": epoch,
                              "train": len(data.train), "test": len(data.test)}
    return out


def estimate(p: PlannedSetting, timing: Mapping[str, Any]) -> float:
    """Predicted seconds of one setting: training, per-epoch scoring, and its analyses.

    Per epoch an optimizer costs its steps (SAM and ASAM two gradients each) and a forward
    pass over the test split; every ``eval_every`` epochs (and at the last) also one over the
    train split, and, while an average exists, one over both for the averaged model.
    Sharpness: about 60 Hessian-vector products per Lanczos run (each about three forward
    passes' worth), the trace's probes and 2 x 5 SAM ascent gradients; rays and the line are
    one forward pass over their split per point. Good to about 30%.
    """
    from landscape.train import averages

    cfg = p.config.resolved()
    c = timing["models"][_cost_key(cfg)]
    n_train, n_test, step, fwd = c["train"], c["test"], c["step"], c["forward_per_sample"]
    steps = math.ceil(n_train / cfg.batch_size)
    every = max(1, int(getattr(cfg, "eval_every", 1) or 1))
    scored = min(1.0, 1.0 / every + 1.0 / cfg.epochs)  # share of epochs that score the train split
    per_seed = 0.0
    for o in cfg.optimizers:
        train = steps * step * (2.0 if o in ("sam", "asam") else 1.0)
        averaged_share = 0.0
        if averages(o, cfg):
            start = cfg.swa_start if o == "swa" else 1 if o == "phase" else cfg.avg_start
            averaged_share = (cfg.epochs - start + 1) / cfg.epochs
        evals = n_test + scored * (n_train + averaged_share * (n_train + n_test))
        per_seed += cfg.epochs * (train + evals * fwd) + 1.0  # + start-up of the run
    per_seed += c["load"]
    if p.stability is not None:
        n = min(p.stability.subset, n_train)
        per_seed += PHASES * (60 * 3 * n * fwd + 1.0)
    f = p.flatness
    if f is not None:
        n = min(f.subset, n_train) if f.subset else n_train
        hvps = (f.lanczos_steps or 40) + f.trace_probes + 10
        per_seed += 2 * hvps * 3 * n * fwd
        per_seed += 2 * f.rays * (f.distances[2] + f.euclid_distances[2]) * n * fwd
        per_seed += f.alphas[2] * n_test * fwd
        per_seed += 4.0  # four analyses: data, engine, files
    return per_seed * p.seeds


# ============================================================================ running

Event = Callable[[dict[str, Any]], None]


@dataclass
class ReproduceResult:
    plan: Plan
    effects: list[dict[str, Any]]  # one row per effect (the verdict table)
    claims: list[dict[str, Any]]  # one row per claim
    report: Path
    json: Path
    csv: Path
    seconds: float  # this call
    total_seconds: float  # every call that worked on this OUT, added up


def _stored(out: Path) -> dict[str, Any] | None:
    path = out / "reproduce.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable; remove it or add --force to start over") from None


def stored_choice(out: str | Path, claims: Sequence[str], *, budget: float | None, seeds: int | None,
                  quick: bool) -> tuple[int, float] | None:
    """The seeds and epoch scale an earlier run in ``out`` chose for the same request, so a
    resumed run measures exactly what the first one started (the load of a shared machine
    changes the timing, and with it what a budget allows)."""
    old = _stored(Path(out))
    if not old or old.get("format") != FORMAT:
        return None
    req = old.get("request", {})
    if req == {"claims": list(claims), "budget": budget, "seeds": seeds, "quick": quick}:
        plan = old.get("plan", {})
        return int(plan["seeds"]), float(plan["epoch_scale"])
    return None


def plan_for(claims: Sequence[str] | str = "all", out: str | Path = "runs/reproduce", *, seeds: int | None = None,
             budget: float | None = None, quick: bool = False, device: str = "auto") -> Plan:
    """:func:`make_plan`, but a rerun of the same request in the same ``out`` keeps its choice."""
    keys = parse_claims(claims)
    chosen = stored_choice(out, keys, budget=budget, seeds=seeds, quick=quick)
    if chosen is None:
        return make_plan(keys, out, seeds=seeds, budget=budget, quick=quick, device=device)
    n, scale = chosen
    plan = make_plan(keys, out, seeds=n, quick=quick, device=device)
    if scale != 1.0:
        settings = [replace(p, config=_train_config(p.setting, scale, quick, device), epoch_scale=scale)
                    for p in plan.settings]
        for p in settings:
            p.predicted_seconds = estimate(p, plan.timing)
        plan.settings, plan.epoch_scale = settings, scale
        plan.predicted_seconds = plan.timing.get("startup", 0.0) + sum(p.predicted_seconds for p in settings)
    old = _stored(Path(out)) or {}
    plan.budget = (old.get("plan") or {}).get("budget")
    if plan.budget:
        plan.budget = {**plan.budget, "reused": True}
    return plan


def _request(plan: Plan, budget: float | None, seeds: int | None) -> dict[str, Any]:
    return {"claims": plan.claims, "budget": budget, "seeds": seeds, "quick": plan.quick}


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} logical CPUs ({cpu}){gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}")


def _prepare_out(out: Path, force: bool) -> None:
    from landscape.train import make_writable_dir

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    ours = (out / "reproduce.json").exists() or any((out / n / "compare.json").exists() for n in SETTINGS)
    if out.exists() and any(out.iterdir()) and not ours:
        raise UserError(f"--out {out}: not empty and not a reproduce directory; choose another --out")
    if force and out.exists():
        for name in SETTINGS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("reproduce.json", "claims.json", "claims.csv", "report.html"):
            (out / name).unlink(missing_ok=True)
    make_writable_dir(out)


def reproduce(plan: Plan, *, budget: float | None = None, seeds: int | None = None, force: bool = False,
              command: str = "landscape reproduce", progress: Callable[[dict[str, Any]], None] | None = None,
              point_progress: Callable[[int, int], None] | None = None, on_event: Event | None = None,
              started: float | None = None) -> ReproduceResult:
    """Train, compare, measure flatness and write the verdicts and the report (see module doc).

    ``budget`` and ``seeds`` are what was asked (recorded so that a rerun keeps the plan);
    ``progress`` is the trainer's per-batch hook, ``point_progress`` the analyses' (points
    done, total), and ``on_event`` hears ``{"event": "setting" | "compare" | "flatness" |
    "report", ...}`` (compare's own events are passed on with ``"setting"`` added).
    ``started`` (a ``time.perf_counter()`` value) is when the command began, so the wall time
    it records includes planning and start-up; default: now.
    """
    from landscape import compare as cmp

    emit = on_event or (lambda event: None)
    started = time.perf_counter() if started is None else started
    out = plan.out
    _prepare_out(out, force)
    old = _stored(out) if not force else None
    previous = float((old or {}).get("total_seconds", 0.0))
    state = {"format": FORMAT, "request": _request(plan, budget, seeds), "plan": plan.record(),
             "command": command, "machine": _machine(), "total_seconds": previous, "finished": False,
             "sessions": list((old or {}).get("sessions", []))}
    session = {"started": _now(), "seconds": 0.0, "finished": False}
    state["sessions"].append(session)

    def save_state() -> None:
        session["seconds"] = round(time.perf_counter() - started, 1)
        state["total_seconds"] = round(previous + session["seconds"], 1)
        atomic_write_text(out / "reproduce.json", json.dumps(state, indent=1))

    save_state()
    measured = Measured()
    try:
        for k, p in enumerate(plan.settings, start=1):
            s = p.setting
            where = out / s.name
            emit({"event": "setting", "setting": s.name, "title": s.title, "index": k, "total": len(plan.settings),
                  "seeds": p.seeds, "epochs": p.config.epochs, "predicted_seconds": p.predicted_seconds})

            def relay(event: dict[str, Any], name: str = s.name) -> None:
                emit({**event, "setting": name, "compare_event": event["event"], "event": "compare"})

            result = cmp.compare(p.config, where, seeds=p.seeds, force=force,
                                 command=f"{command} (setting {s.name})", progress=progress, on_event=relay)
            measured.tables[s.name] = result.table
            if p.flatness is not None:
                measured.flatness[s.name] = [
                    measure_flatness(result, p.flatness, where / "flatness" / f"seed_{seed}", seed=seed,
                                     command=f"{command} (setting {s.name}, seed {seed})",
                                     device=p.config.device, point_progress=point_progress,
                                     emit=lambda e, name=s.name: emit({**e, "setting": name}))
                    for seed in result.table.seeds]
            if p.stability is not None:
                measured.stability[s.name] = [
                    measure_stability(result, p.stability, where / "stability" / f"seed_{seed}", seed=seed,
                                      command=f"{command} (setting {s.name}, seed {seed})",
                                      device=p.config.device, point_progress=point_progress,
                                      emit=lambda e, name=s.name: emit({**e, "setting": name}))
                    for seed in result.table.seeds]
            save_state()
        effects, claims = evaluate(plan.claims, measured)
        session["finished"] = True
        state["finished"] = True
        save_state()
        paths = write_outputs(plan, effects, claims, measured, state, command)
        emit({"event": "report", "path": paths[0]})
    except BaseException:
        save_state()  # the time spent so far counts toward the total when the run is resumed
        raise
    return ReproduceResult(plan, effects, claims, *paths, seconds=session["seconds"],
                           total_seconds=state["total_seconds"])


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _solution(result: Any, seed: int, which: tuple[str, str]) -> Path:
    optimizer, model = which
    run = next(r for r in result.plan.runs if r.seed == seed and not r.cell and optimizer in r.optimizers)
    return run.directory / optimizer / ("averaged.pt" if model == "averaged" else "final.pt")


def measure_flatness(result: Any, f: Flatness, where: Path, *, seed: int, command: str, device: str = "auto",
                     point_progress: Callable[[int, int], None] | None = None,
                     emit: Event | None = None) -> dict[str, float]:
    """lambda_max, trace and SAM sharpness at both solutions of one seed, the rays from both,
    and the test loss on the line between them; every file resumes (``.partial``)."""
    from landscape.analyses import AnalysisOptions, SharpnessOptions, interpolate, rays, sharpness
    from landscape.analyses.sharpness import summarize
    from landscape.plots.flatness import RISE, line_minimum, ray_width
    from landscape.store import load_result

    emit = emit or (lambda event: None)
    a, b = _solution(result, seed, f.a), _solution(result, seed, f.b)
    where.mkdir(parents=True, exist_ok=True)
    n_train = result.plan.runs[0].config.data_options.get("num_train")
    subset = f.subset if not n_train or f.subset < n_train else None
    opts = AnalysisOptions(splits=("train",), subset=subset, device=device, command=command,
                           progress=point_progress)
    sopts = SharpnessOptions(top_k=1, tol=1e-3, lanczos_steps=f.lanczos_steps, trace=True,
                             trace_probes=f.trace_probes, sam=True, rho=f.rho)
    steps: list[tuple[str, Callable[[], Path]]] = [
        ("sharpness_a", lambda: sharpness(a, where / "sharpness_a.h5", sopts, opts)),
        ("sharpness_b", lambda: sharpness(b, where / "sharpness_b.h5", sopts, opts)),
        ("rays", lambda: rays([a, b], where / "rays.h5", np.linspace(*f.distances), n_rays=f.rays, norm="filter",
                              opts=opts)),
        ("rays_euclid", lambda: rays([a, b], where / "rays_euclid.h5", np.linspace(*f.euclid_distances),
                                     n_rays=f.rays, norm="none", opts=opts)),
        ("line", lambda: interpolate(a, b, where / "line.h5", np.linspace(*f.alphas),
                                     replace(opts, splits=("test",), subset=None))),
    ]
    files: dict[str, Path] = {}
    for name, step in steps:
        emit({"event": "flatness", "seed": seed, "analysis": name})
        files[name] = step()
    values: dict[str, float] = {}
    for side, name in (("a", "sharpness_a"), ("b", "sharpness_b")):
        s = summarize(files[name])
        values[f"lambda_max_{side}"] = float((s.get("eigenvalues") or [math.nan])[0])
        values[f"trace_{side}"] = float((s.get("trace") or {}).get("value") or math.nan)
        values[f"sam_{side}"] = float((s.get("sam") or {}).get("ascent") or math.nan)
    for name, key in (("rays", "width"), ("rays_euclid", "width_euclid")):
        r = load_result(files[name])
        d = np.asarray(r.coords["distance"], dtype=np.float64)
        loss = np.asarray(r.metrics["train"]["loss"], dtype=np.float64)
        for c, side in enumerate("ab"):
            width, censored = ray_width(d, loss[c], RISE)
            values[f"{key}_{side}"] = width
            values[f"{key}_censored_{side}"] = float(censored)
            values[f"train_loss_{side}"] = float(loss[c][:, 0].mean())
    line = load_result(files["line"])
    alpha = np.asarray(line.coords["alpha"], dtype=np.float64)
    values["alpha_min"] = line_minimum(alpha, line.metrics["test"]["loss"])
    # At an end of the grid the true minimum may lie further out: say so in the table.
    values["alpha_min_censored"] = float(values["alpha_min"] in (alpha[0], alpha[-1]))
    values["seed"] = seed
    return values


def measure_stability(result: Any, st: Stability, where: Path, *, seed: int, command: str, device: str = "auto",
                      point_progress: Callable[[int, int], None] | None = None,
                      emit: Event | None = None) -> dict[str, Any]:
    """lambda_max of ``st.optimizer``'s iterate at the last epoch of every LR phase of one seed's
    run (the checkpoint the trainer wrote then), on a fixed train subset; files resume."""
    from landscape.analyses import AnalysisOptions, SharpnessOptions, sharpness
    from landscape.analyses.sharpness import summarize
    from landscape.optim import schedules

    emit = emit or (lambda event: None)
    run = next(r for r in result.plan.runs if r.seed == seed and not r.cell and st.optimizer in r.optimizers)
    cfg = run.config.resolved()
    if cfg.schedule != "phases":
        raise UserError(f"the stability measurement needs a phases schedule, not {cfg.schedule!r}")
    phases = schedules.parse_phases(cfg.phases)
    n_train = cfg.data_options.get("num_train")
    opts = AnalysisOptions(splits=("train",), subset=st.subset if not n_train or st.subset < n_train else None,
                           device=device, command=command, progress=point_progress)
    sopts = SharpnessOptions(top_k=1, tol=1e-3, trace=False, sam=False)
    where.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"seed": seed, "epoch": [], "lr": [], "lambda_max": [], "verdict_gd": []}
    end = 0
    for k, (length, lr) in enumerate(phases, start=1):
        end += length
        emit({"event": "stability", "seed": seed, "phase": k, "epoch": end})
        ckpt = run.directory / st.optimizer / "checkpoints" / f"epoch_{end:04d}.pt"
        summary = summarize(sharpness(ckpt, where / f"phase_{k}.h5", sopts, opts))
        out["epoch"].append(end)
        out["lr"].append(float(lr))
        out["lambda_max"].append(float((summary.get("eigenvalues") or [math.nan])[0]))
        out["verdict_gd"].append(((summary.get("stability") or {}).get("gd_limit") or {}).get("verdict"))
    return out


def evaluate(claims: Sequence[str], measured: Measured) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every effect of ``claims`` from what was measured: per-seed values, interval, verdict."""
    rows, summary = [], []
    for key in claims:
        claim = CLAIMS[key]
        verdicts = []
        for e in claim.effects:
            try:
                values = np.asarray(e.measure(measured), dtype=np.float64)
            except KeyError as exc:  # a row the setting does not have: a programming error in the registry
                raise RuntimeError(f"claim {key}: effect {e.key}: {exc}") from None
            ci = paired_interval(values)
            v = verdict(ci["ci_low"], ci["ci_high"], e.sign) if ci["n"] >= 2 else "inconclusive"
            verdicts.append(v)
            rows.append({"claim": key, "effect": e.key, "measures": e.text, "claimed": ">" if e.sign > 0 else "<",
                         "setting": e.setting, **ci, "per_seed": [_num(x) for x in values],
                         "published": e.published, "verdict": v, "digits": e.digits})
        summary.append({"claim": key, "title": claim.title, "paper": claim.paper, "statement": claim.statement,
                        "verdict": claim_verdict(verdicts),
                        "effects": [r["effect"] for r in rows if r["claim"] == key]})
    return rows, summary


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def fmt_effect(row: Mapping[str, Any]) -> str:
    """``+0.52 [+0.21, +0.83]`` in the effect's digits."""
    d = int(row.get("digits", 2))
    m, lo, hi = row["mean"], row["ci_low"], row["ci_high"]
    if m is None or not math.isfinite(m):
        return "n/a"
    if lo is None or not math.isfinite(lo):
        return f"{m:+.{d}f}"
    return f"{m:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"


# ============================================================================ outputs

CSV_FIELDS = ("claim", "effect", "measures", "claimed", "setting", "n", "mean", "std", "ci_low", "ci_high",
              "published", "verdict", "per_seed")


def claims_csv(effects: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in effects:
        w.writerow([r[k] if k != "per_seed" else " ".join("nan" if v is None else repr(v) for v in r[k])
                    for k in CSV_FIELDS])
    return buf.getvalue()


def write_outputs(plan: Plan, effects: list[dict[str, Any]], claims: list[dict[str, Any]], measured: Measured,
                  state: Mapping[str, Any], command: str) -> tuple[Path, Path, Path]:
    out = plan.out
    doc = {"format": FORMAT, "created": _now(), "command": command, "machine": state["machine"],
           "wall_seconds": state["total_seconds"], "sessions": state["sessions"], "rule": RULE,
           "confidence": CONFIDENCE, "plan": plan.record(), "claims": claims, "effects": effects,
           "flatness": {k: v for k, v in measured.flatness.items()},
           "stability": {k: v for k, v in measured.stability.items()}}
    json_path, csv_path = out / "claims.json", out / "claims.csv"
    atomic_write_text(json_path, json.dumps(doc, indent=1))
    atomic_write_text(csv_path, claims_csv(effects))
    report_path = write_report(plan, effects, claims, measured, doc, out / "report.html")
    return report_path, json_path, csv_path


def _verdict_html(v: str) -> str:
    import html

    color = {"reproduced": "#1a7f37", "not reproduced": "#a40000"}.get(v, "#8a6d00")
    return f'<b style="color:{color}">{html.escape(v)}</b>'


def write_report(plan: Plan, effects: Sequence[Mapping[str, Any]], claims: Sequence[Mapping[str, Any]],
                 measured: Measured, doc: Mapping[str, Any], path: Path) -> Path:
    """The page: the verdicts first (claim, effect with its CI, published number, verdict),
    then every setting's comparison table and figures, the flatness numbers per seed and
    the settings tried before."""
    import html

    from landscape.plots import write_html
    from landscape.plots.pages import _compare_section, figure
    from landscape.store import load_result

    esc = html.escape
    items: list[Any] = ["<h2>The papers' claims, measured here</h2>"]
    head = ["claim", "measured effect", "claimed", "mean [95% CI]", "n", "published (other data and models)",
            "verdict"]
    body = []
    for c in claims:
        rows = [r for r in effects if r["claim"] == c["claim"]]
        for j, r in enumerate(rows):
            first = (f'<td rowspan="{len(rows)}"><b>{esc(c["title"])}</b><br><small>{esc(c["paper"])}</small><br>'
                     f'{_verdict_html(c["verdict"])}</td>') if j == 0 else ""
            body.append(f"<tr>{first}<td>{esc(r['measures'])}</td><td>{esc(r['claimed'])} 0</td>"
                        f"<td>{esc(fmt_effect(r))}</td><td>{r['n']}</td><td>{esc(r['published'])}</td>"
                        f"<td>{_verdict_html(r['verdict'])}</td></tr>")
    items.append('<table class="summary"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
                 + "".join(body) + "</table>")
    items.append(f'<p class="caption"><b>Rule.</b> {esc(RULE)}. Effects are paired within a seed (same '
                 "initialization and batch order for every optimizer). The published numbers come from other "
                 "datasets, models and budgets: they say which sign to expect, not the size.</p>")
    for p in plan.settings:
        s = p.setting
        where = plan.out / s.name
        cfg = p.config.resolved()
        items.append(f"<h2>Setting <code>{esc(s.name)}</code>: {esc(s.title)}</h2>")
        desc = (f"{p.seeds} seeds; {cfg.epochs} epochs; model {cfg.model} {json.dumps(cfg.model_options)}; "
                f"data {cfg.dataset} {json.dumps(cfg.data_options)}; batch {cfg.batch_size}; lr {cfg.lr:g}; "
                f"momentum {cfg.momentum:g}; weight decay {cfg.weight_decay:g}; schedule {cfg.schedule}"
                + (f" {cfg.phases}" if cfg.schedule == "phases" else "")
                + (f"; optimizers {', '.join(s.optimizers)}"))
        items.append(f'<p class="caption">{esc(desc)}</p>')
        compare_h5 = where / "compare.h5"
        if compare_h5.is_file():
            items.append(_compare_section(compare_h5))
            items.append(figure(load_result(compare_h5)))
        flat = measured.flatness.get(s.name)
        if flat and p.flatness is not None:
            items.append(_flatness_table(flat, p.flatness))
            seed0 = where / "flatness" / f"seed_{int(flat[0]['seed'])}"
            for name in ("rays.h5", "rays_euclid.h5", "line.h5"):
                if (seed0 / name).is_file():
                    items.append(f"<h3>{esc(name)}, seed {int(flat[0]['seed'])}</h3>")
                    items.append(figure(load_result(seed0 / name)))
        if measured.stability.get(s.name):
            items.append(_stability_figure(measured.stability[s.name], p.stability))
        if s.tried:
            items.append("<h3>Settings tried before this one</h3><ul>"
                         + "".join(f"<li>{esc(t)}</li>" for t in s.tried) + "</ul>")
    wall = float(doc["wall_seconds"])
    caption = (f"{esc(str(doc['created']))} · {esc(str(doc['machine']))} · command <code>{esc(str(doc['command']))}"
               f"</code> · wall time {wall / 60:.1f} min (all sessions) · predicted "
               f"{plan.predicted_seconds / 60:.0f} min · {plan.seeds} seeds"
               + (f" · epochs scaled to {plan.epoch_scale:.0%} by --budget" if plan.epoch_scale != 1 else "")
               + (" · <b>--quick smoke run: the verdicts mean nothing</b>" if plan.quick else ""))
    return write_html(items, path, "landscape reproduce: the papers' claims, measured", caption)


def _flatness_table(flat: Sequence[Mapping[str, float]], f: Flatness) -> str:
    from landscape.plots.flatness import RISE

    head = ["seed", "λ_max SGD", "λ_max SWA", "trace SGD", "trace SWA", "SAM sharpness SGD", "SAM sharpness SWA",
            f"ray width SGD (rise {RISE:g})", "ray width SWA", "Euclidean ray width SGD", "Euclidean ray width SWA",
            "α of test-loss minimum"]

    def n(v: Any, d: int = 3) -> str:
        return "—" if v is None or not math.isfinite(float(v)) else f"{float(v):.{d}f}"

    def w(s: Mapping[str, float], side: str, key: str = "width") -> str:
        return (">" if s.get(f"{key}_censored_{side}") else "") + n(s.get(f"{key}_{side}"))

    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            int(s["seed"]), n(s["lambda_max_a"]), n(s["lambda_max_b"]), n(s["trace_a"], 1), n(s["trace_b"], 1),
            n(s["sam_a"], 4), n(s["sam_b"], 4), w(s, "a"), w(s, "b"), w(s, "a", "width_euclid"),
            w(s, "b", "width_euclid"),
            ("≥ " if s.get("alpha_min_censored") and s["alpha_min"] > 0.5 else "≤ " if s.get("alpha_min_censored")
             else "") + n(s["alpha_min"]))) + "</tr>" for s in flat)
    note = (f"SGD = {'/'.join(f.a)}, SWA = {'/'.join(f.b)}; train loss on a fixed subset of {f.subset} samples for "
            f"λ_max (Lanczos), trace (Hutch++, {f.trace_probes} products), SAM sharpness (ρ = {f.rho:g}) and "
            f"{f.rays} random rays (the same draws for both) to filter-normalised distance {f.distances[1]:g} and, "
            f"along unit-norm directions, to Euclidean distance {f.euclid_distances[1]:g}; the line on the whole "
            "test split, "
            f"α from {f.alphas[0]:g} to {f.alphas[1]:g} in {f.alphas[2]} points, minimum refined by a parabola")
    return ("<h3>Flatness at every seed</h3>"
            f'<table class="summary"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{body}</table>'
            f'<p class="caption">{note}.</p>')


def _stability_figure(per_seed: Sequence[Mapping[str, Any]], st: Stability | None) -> Any:
    import plotly.graph_objects as go

    from landscape.plots.style import PALETTE

    fig = go.Figure()
    lrs: list[float] = []
    for j, s in enumerate(per_seed):
        lrs += list(s["lr"])
        fig.add_trace(go.Scatter(x=list(s["lr"]), y=list(s["lambda_max"]), mode="markers+lines",
                                 name=f"seed {s['seed']}", line=dict(color=PALETTE[(j + 1) % len(PALETTE)], width=1),
                                 marker=dict(size=9),
                                 hovertemplate="lr %{x:g}<br>λ_max %{y:.4g}<extra></extra>"))
    if lrs:
        grid = np.geomspace(min(lrs) * 0.8, max(lrs) * 1.25, 50)
        fig.add_trace(go.Scatter(x=grid.tolist(), y=(2 / grid).tolist(), mode="lines", name="2/lr",
                                 line=dict(color="#D55E00", width=3, dash="dash")))
    who = st.optimizer if st is not None else "sgd"
    fig.update_xaxes(type="log", title_text="learning rate of the phase")
    fig.update_yaxes(type="log", title_text="λ_max of the train loss")
    fig.update_layout(title=f"λ_max of {who}'s iterate at the end of each LR phase, against 2/lr", height=520,
                      template="plotly_white")
    return fig

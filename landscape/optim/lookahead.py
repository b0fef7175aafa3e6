"""Lookahead (Zhang, Lucas, Hinton & Ba 2019): k fast steps forward, one step back.

The base ("fast") optimizer runs as usual; every k of its steps the slow weights move a
fraction alpha toward the fast ones, ``slow += alpha (fast - slow)``, and the fast
weights restart from there, ``fast = slow``. The slow weights start at the weights the
optimizer was built with.

The slow weights are Lookahead's output (the fast weights are scratch between syncs):
``slow_weights()`` puts them into the parameters for as long as one wants to evaluate or
save them, and restores the fast weights exactly afterwards.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim import Optimizer

from landscape.errors import UserError


class Lookahead(Optimizer):
    """Wrap an optimizer *instance*; shares its ``param_groups`` (same dicts)."""

    def __init__(self, base_optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not (isinstance(k, int) and k >= 1):
            raise UserError(f"Lookahead k must be an integer >= 1, got {k!r}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"Lookahead alpha must be in [0, 1], got {alpha}")
        # Empty defaults: k and alpha are not written into the groups, where "alpha"
        # would clash with e.g. RMSprop's own option of that name.
        super().__init__(base_optimizer.param_groups, {})
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults
        self.k = k
        self.alpha = alpha
        self.fast_steps = 0  # base steps taken; a sync happens when it hits a multiple of k
        self._init_slow()

    @torch.no_grad()
    def _init_slow(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "slow" not in self.state[p]:
                    self.state[p]["slow"] = p.detach().clone()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # still inside Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(param_group)  # shared list: ours too
        self._init_slow()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One base step (with ``closure`` if given); every k-th also syncs slow and fast."""
        loss = self.base_optimizer.step() if closure is None else self.base_optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        slow = self.state[p]["slow"]
                        slow.add_(p.detach() - slow, alpha=self.alpha)
                        p.copy_(slow)
        return loss

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Inside the block the parameters hold the slow weights; on exit the fast weights
        are copied back bit for bit (also after an exception). Buffers (BatchNorm running
        statistics) are left alone, as the Lookahead reference code does when it evaluates."""
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.no_grad():
            fast = [p.detach().clone() for p in params]
            for p in params:
                p.copy_(self.state[p]["slow"])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, f in zip(params, fast):
                    p.copy_(f)

    def state_dict(self) -> dict[str, Any]:
        # Slow weights are keyed by the parameter's position in param_groups, the same
        # indexing torch uses for the base optimizer's state.
        params = [p for g in self.param_groups for p in g["params"]]
        return {
            "base": self.base_optimizer.state_dict(),
            "slow": {i: self.state[p]["slow"] for i, p in enumerate(params)},
            "fast_steps": self.fast_steps,
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        # The base optimizer built new group dicts; share them again.
        self.param_groups = self.base_optimizer.param_groups
        self.k = state_dict["k"]
        self.alpha = state_dict["alpha"]
        self.fast_steps = state_dict["fast_steps"]
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = defaultdict(dict)
        for i, slow in state_dict["slow"].items():
            p = params[int(i)]
            # clone: the loaded tensor must not alias the dict the caller handed in.
            self.state[p]["slow"] = slow.detach().to(device=p.device, dtype=p.dtype).clone()
        self._init_slow()

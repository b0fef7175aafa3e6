"""Sharpness-Aware Minimization (SAM, Foret et al. 2021) and its adaptive variant ASAM
(Kwon et al. 2021), as a wrapper around any torch optimizer.

One SAM step needs two gradients of the same mini-batch:

1. ``g = grad L(w)``: computed by the caller with the usual forward/backward.
2. ``first_step()`` moves the weights to the (approximate) worst point in the
   neighbourhood, ``w + eps``:

   - SAM:  ``eps = rho * g / ||g||``, ``||.||`` the L2 norm over *all* parameters.
   - ASAM: ``eps = rho * T^2 g / ||T g||`` with the diagonal operator ``T``:
     element-wise ``T = |w| + eta``; with ``filterwise=True``
     ``T_i = ||w_filter_i||_2 + eta`` broadcast over the filter, a filter being a
     slice along dim 0 (an output channel of a conv, a row of a linear weight). A 1-D
     or 0-D parameter (bias, BatchNorm scale) has no filters, so each element is its
     own filter, which gives ``|w_i| + eta``: the treatment eq. 5 of the ASAM paper
     gives to parameters that are not filter weights.

3. The caller computes ``grad L(w + eps)`` (zero_grad, forward, backward).
4. ``second_step()`` puts the weights back to ``w`` and lets the base optimizer step
   with the gradient taken at ``w + eps``.

``step(closure)`` does 2-4; the caller has already done 1. Weight decay, momentum and
the learning rate all belong to the base optimizer, so weight decay is applied to
``w`` together with the gradient from ``w + eps``: the convention of the reference
implementations (google-research/sam, SamsungLabs/ASAM, davda54/sam).

Typical loop::

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()            # gradient at w
    def closure():
        with frozen_bn_stats(model):           # BN statistics: once per SAM step
            loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)                          # perturb, re-evaluate, restore, step
    opt.zero_grad()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from landscape.errors import UserError

_SAM_OPTIONS = ("rho", "adaptive", "eta", "filterwise")


class SAM(Optimizer):
    """SAM / ASAM around a base optimizer built from ``base_optimizer(param_groups, **base_kwargs)``.

    The base optimizer shares this optimizer's ``param_groups`` (the same dicts), so an LR
    schedule that writes ``group["lr"]`` reaches the base optimizer, and each group may
    carry its own ``rho``/``adaptive``/``eta``/``filterwise`` (e.g. biases in a group with
    ``adaptive=False`` to reproduce the official ASAM code, which only rescales weights).
    Parameters whose ``.grad`` is None are neither perturbed nor stepped.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Callable[..., Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        filterwise: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not rho >= 0:
            raise UserError(f"SAM rho must be >= 0, got {rho}")
        if not eta >= 0:
            raise UserError(f"ASAM eta must be >= 0, got {eta}")
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta, filterwise=filterwise, **base_kwargs)
        super().__init__(params, defaults)
        # Hand our group dicts to the base optimizer: it fills in its own defaults in
        # place, and from then on both optimizers read and write the very same dicts.
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # still inside Optimizer.__init__
            super().add_param_group(param_group)
            return
        for name in _SAM_OPTIONS:
            param_group.setdefault(name, self.defaults[name])
        # The list is shared, so the base optimizer's append is ours too.
        self.base_optimizer.add_param_group(param_group)

    @staticmethod
    def _scale(p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor | None:
        """The diagonal of ASAM's T for one parameter; None for plain SAM (T = I)."""
        if not group["adaptive"]:
            return None
        if group["filterwise"] and p.dim() > 1:
            norms = p.detach().flatten(1).norm(dim=1)
            return norms.view(-1, *([1] * (p.dim() - 1))) + group["eta"]
        # Element-wise; also the filter-wise case for 1-D/0-D params (one element = one filter).
        return p.detach().abs() + group["eta"]

    def _with_grad(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p, group

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + eps``, eps computed from the current ``.grad``."""
        pairs = list(self._with_grad())
        if not pairs:
            return
        scales = [self._scale(p, group) for p, group in pairs]
        # ||T g|| over all parameters together: the constraint ball is one ball in the
        # whole weight space, not one per tensor.
        device = pairs[0][0].device
        norm = torch.stack([
            (p.grad if t is None else t * p.grad).norm(p=2).to(device)
            for (p, _), t in zip(pairs, scales)
        ]).norm(p=2)
        for (p, group), t in zip(pairs, scales):
            # Exact copy rather than subtracting eps later: w + eps - eps != w in floats.
            self.state[p]["old_p"] = p.detach().clone()
            eps = p.grad if t is None else t * t * p.grad
            # 1e-12 keeps a zero gradient (eps = 0) from producing NaN.
            p.add_(eps * (group["rho"] / (norm.to(p.device) + 1e-12)))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` and step the base optimizer with the gradient taken at ``w + eps``."""
        for group in self.param_groups:
            for p in group["params"]:
                # pop: a parameter skipped this step must not get a stale copy back
                # next time, and the copy's memory is free until the next first_step.
                old = self.state[p].pop("old_p", None)
                if old is not None:
                    p.copy_(old)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step, after the caller's forward/backward at ``w`` has filled ``.grad``.

        Does ``first_step()``, ``zero_grad()``, ``closure()``, ``second_step()``. The closure
        must run forward *and* backward at the perturbed weights and return the loss; it
        must not call ``zero_grad`` (step already did). Returns the closure's loss (the loss
        at ``w + eps``). Afterwards ``.grad`` still holds the gradient at ``w + eps``.
        """
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that does forward+backward; "
                "or call first_step()/second_step() yourself"
            )
        self.first_step()
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        # Everything worth saving (momentum buffers, step counts, the groups with our
        # rho/eta) lives in the base optimizer; our own state is only the transient copy
        # of w between first_step and second_step.
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # load_state_dict builds new group dicts; share them again or an LR schedule
        # writing to our groups would stop reaching the base optimizer.
        self.param_groups = self.base_optimizer.param_groups


ASAM_SCOPES = ("all", "weights")


def asam_param_groups(model: nn.Module, scope: str = "all") -> list[dict[str, Any]]:
    """``model``'s parameters as SAM param groups for ASAM's operator ``T``.

    ``"all"``: one group; every parameter is rescaled (``T = |w| + eta``), as eq. 5 of the
    ASAM paper writes T. ``"weights"``: the rule of the official code (SamsungLabs/ASAM,
    ``asam.py``): a parameter is rescaled when its name (``named_parameters``) contains
    ``"weight"`` (conv and linear weights, and BatchNorm's scale, whose name is
    ``*.weight``); every other one (biases, BatchNorm's shift) gets ``T = 1`` and is
    perturbed like in SAM. Both groups share one ``||T g||``, as in that code.
    """
    if scope not in ASAM_SCOPES:
        raise UserError(f"ASAM scope must be one of {', '.join(ASAM_SCOPES)}, got {scope!r}")
    named = list(model.named_parameters())
    if scope == "all":
        return [{"params": [p for _, p in named]}]
    groups = [{"params": [p for n, p in named if "weight" in n]},
              {"params": [p for n, p in named if "weight" not in n], "adaptive": False}]
    return [g for g in groups if g["params"]]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Stop BatchNorm running-statistics updates inside the block.

    SAM runs two forward passes per step; without this the running mean/var (and
    ``num_batches_tracked``) would be updated twice, the second time with activations of
    the perturbed weights. With ``track_running_stats=False`` a BatchNorm in train mode
    still normalizes with the batch statistics (so the gradient is the right one) but
    leaves its buffers alone; in eval mode it still uses the running statistics. The
    previous flag of every module is restored on exit, even after an exception.
    """
    saved = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BatchNorm)]
    for m, _ in saved:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, flag in saved:
            m.track_running_stats = flag

"""Weight averaging along the SGD trajectory, on top of ``torch.optim.swa_utils.AveragedModel``.

- ``uniform_average``: the plain running mean of SWA (Izmailov et al. 2018) and of
  averaged SGD (Polyak & Juditsky).
- ``bias_corrected_ema``: the exponential average of Kobayashi's phase-wise
  aggregation (eq. 3, Algorithm 1), ``m_n / (1 - gamma^n)`` with ``m_0 = 0`` and
  ``m_n = gamma m_{n-1} + (1 - gamma) theta_n``.

Both average parameters only (``use_buffers=False``): averaged weights need their own
BatchNorm statistics, so recompute them afterwards with
``torch.optim.swa_utils.update_bn(loader, model)`` (both papers do this).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from landscape.errors import UserError


def _lerp_towards(weight: Callable[[int], float]):
    """An AveragedModel ``multi_avg_fn`` doing a <- a + weight(n) (theta - a) on the n-th update.

    One fused ``_foreach_lerp_`` with a Python-float weight over all tensors, instead of a
    chain of ops per tensor: measured on CPU (bench/train_throughput.py) this turns the
    cost of averaging every step from ~5% of a cnn1d step into noise.
    """

    def multi_avg_fn(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        # AveragedModel copies theta_1 itself and calls us from the 2nd update on, with
        # num_averaged = n - 1.
        torch._foreach_lerp_(averaged, current, weight(int(num_averaged) + 1))

    return multi_avg_fn


def uniform_average(model: nn.Module, device: torch.device | str | None = None) -> AveragedModel:
    """A running mean of ``model``'s parameters; call ``.update_parameters(model)`` per sample.

    ``device`` may put the copy elsewhere (e.g. "cpu" to spare accelerator memory).
    """
    return AveragedModel(model, device=device, multi_avg_fn=_lerp_towards(lambda n: 1.0 / n))


def bias_corrected_ema(
    model: nn.Module, gamma: float, device: torch.device | str | None = None
) -> AveragedModel:
    """Kobayashi's bias-corrected EMA of ``model``'s parameters (eq. 3).

    After n calls of ``.update_parameters(model)`` the averaged parameters equal
    ``(1-gamma)/(1-gamma^n) * sum_t gamma^(n-t) theta_t``, i.e. line 10 of Algorithm 1
    already applied at every n, so the average is usable at any time, not only at the
    end of a phase.
    """
    if not 0.0 <= gamma < 1.0:
        raise UserError(f"EMA factor gamma must be in [0, 1), got {gamma}")

    # Writing a_n = m_n / (1 - gamma^n) and eliminating m gives
    #   a_n = a_{n-1} + (theta_n - a_{n-1}) * (1 - gamma) / (1 - gamma^n).
    # For n = 1 the weight is 1, i.e. a_1 = theta_1: exactly AveragedModel's first copy.
    return AveragedModel(model, device=device,
                         multi_avg_fn=_lerp_towards(lambda n: (1.0 - gamma) / (1.0 - gamma**n)))


def phase_gamma(epochs_in_phase: int, gamma0: float = 0.9) -> float:
    """Kobayashi's per-phase decay ``gamma = gamma0 ** (80 / T)``.

    Scaling the exponent by the phase length T keeps the weight of epoch t,
    ``gamma^(T-t) = gamma0^(80 (T-t)/T)``, a function of the *relative* position t/T,
    so phases of 80 and 40 epochs are averaged alike.
    """
    if epochs_in_phase < 1:
        raise UserError(f"a phase needs at least 1 epoch, got {epochs_in_phase}")
    if not 0.0 < gamma0 < 1.0:
        raise UserError(f"base EMA factor gamma0 must be in (0, 1), got {gamma0}")
    return gamma0 ** (80.0 / epochs_in_phase)


@torch.no_grad()
def copy_average_into(averaged: AveragedModel, model: nn.Module) -> None:
    """Overwrite ``model``'s parameters with the averaged ones (Algorithm 1, line 10).

    Parameters are matched by name. Buffers (BatchNorm statistics) are left as they are:
    they belong to the last SGD weights, so run ``update_bn`` before evaluating.
    """
    source = dict(averaged.module.named_parameters())
    target = dict(model.named_parameters())
    if source.keys() != target.keys():
        raise ValueError("averaged model and model have different parameters")
    for name, p in target.items():
        p.copy_(source[name])

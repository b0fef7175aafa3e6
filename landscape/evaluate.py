"""Scoring one model on one split, and recomputing BatchNorm statistics.

Both the trainer and the analyses use these, so every number in the project is the
same kind of number: a per-sample mean over the whole split, accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _input_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def recompute_bn(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> None:
    """Reset and recompute BatchNorm running statistics with one pass over ``x``.

    Uses ``torch.optim.swa_utils.update_bn`` (cumulative mean over the batches), so the
    statistics are those of the model's own weights, not of the iterate they came from.
    """
    if has_batchnorm(model):
        update_bn(_input_batches(x, batch_size), model)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over all of ``x``.

    Sums are kept in float64 so the mean does not depend on the batch size. A diverged
    model gives NaN/inf, which is returned as is.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    undefined = torch.zeros((), dtype=torch.bool, device=x.device)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").double()
        correct += (logits.argmax(dim=1) == target).sum()
        undefined |= ~torch.isfinite(logits).all()  # argmax of NaN/inf logits is no prediction
    model.train(was_training)
    n = len(x)
    return loss_sum.item() / n, math.nan if undefined.item() else correct.item() / n

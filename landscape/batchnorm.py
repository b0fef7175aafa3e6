"""BatchNorm statistics of a model at a point, pooled exactly over a whole split.

The definition (the engine's ``bn="recompute"``, and what a result file's ``bn_samples`` /
``bn_batch`` attributes refer to):

1. The samples (the whole train split, or a fixed seeded subset of ``bn_samples``) are cut,
   in order, into ``G = ceil(N / bn_batch)`` consecutive groups of nearly equal size (sizes
   differ by at most one, as ``torch.tensor_split``).
2. Each group goes through the model with every BatchNorm layer in training mode: the layer
   normalizes the group with the group's own mean and biased variance, exactly as BatchNorm
   does in training and in ``torch.optim.swa_utils.update_bn``. All other modules stay in
   eval mode.
3. Each BatchNorm layer's ``running_mean`` / ``running_var`` become the mean and the
   unbiased (``n - 1``) variance, per channel, of *everything that layer received* over all
   groups (all samples and positions): the population statistics of its input. Per group,
   torch's own BatchNorm kernel gives the group's mean and variance (float32, as in
   training); the groups are pooled in float64.

So the first BatchNorm layer gets the exact whole-split statistics of its input whatever
``bn_batch`` is. Deeper layers see inputs normalized by the *group* statistics of the layers
before them (step 2), so their statistics depend on ``bn_batch`` as they depend on the batch
size in training; this is why ``bn_batch`` is fixed (default 128, the usual training batch)
and recorded, not tied to the device or to the scoring batch.

``update_bn`` (``momentum=None``) instead averages the *groups'* means and unbiased
variances with equal weights: its variance misses the spread of the group means around the
whole-split mean, and a short last batch weighs as much as a full one. With a single group
(``bn_batch >= N``) the two definitions coincide.

The layers are BatchNorm modules with running statistics (``track_running_stats=True``);
others are left alone. A layer the forward pass never reaches is reset (mean 0, variance 1),
as ``update_bn`` leaves it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from landscape.errors import UserError

__all__ = ["BN_BATCH", "Pool", "batchnorms", "group_bounds", "recompute_statistics", "train_mode_statistics"]

BN_BATCH = 128  # default group size: the usual training batch (the project's `train --batch-size`)

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules whose running statistics are recomputed, in ``modules()`` order."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def group_bounds(n: int, bn_batch: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the ``ceil(n / bn_batch)`` consecutive groups (sizes differ by <= 1)."""
    if n < 1:
        return []
    count = -(-n // bn_batch)
    size, extra = divmod(n, count)  # the first `extra` groups get one more sample
    bounds, start = [], 0
    for g in range(count):
        stop = start + size + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class Pool:
    """Per-channel statistics of each layer's input, pooled over groups in float64.

    ``add(layer, n, mean, var)`` takes one group: ``n`` values per channel, their mean and
    *biased* variance, shaped ``(..., C)`` (a leading axis of points under vmap). Sums are
    kept relative to the layer's first group mean (a shift), so ``M2 = S2 - S1**2 / N``
    does not cancel.
    """

    def __init__(self, layers: int):
        self._state: list[list | None] = [None] * layers  # [count, shift, S1, S2]

    def add(self, layer: int, n: int, mean: Tensor, var: Tensor) -> None:
        mean, var = mean.double(), var.double()
        state = self._state[layer]
        if state is None:
            shift = mean.clone()
            self._state[layer] = [n, shift, torch.zeros_like(mean), n * var]
            return
        d = mean - state[1]
        state[0] += n
        state[2] += n * d
        state[3] += n * (var + d * d)

    def result(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """(mean, unbiased variance) float64, or None if the layer saw nothing."""
        state = self._state[layer]
        if state is None:
            return None
        count, shift, s1, s2 = state
        m2 = (s2 - s1 * s1 / count).clamp_min(0)
        return shift + s1 / count, m2 / (count - 1)


def _train_forward(collected: list, index: int):
    """A BatchNorm forward that normalizes with the batch's own statistics and records them.

    ``torch.native_batch_norm`` in training mode (no running statistics: nothing is mutated)
    is the kernel BatchNorm runs in training; it returns the batch mean and the inverse
    standard deviation 1/sqrt(var + eps), so the variance costs no extra pass over the
    activations. Works under ``torch.func.vmap`` (then the statistics are per point)."""

    def forward(self: _BatchNorm, x: Tensor) -> Tensor:
        n = x.numel() // x.shape[1]
        if n < 2:
            raise UserError(f"BatchNorm statistics need more than one value per channel, got a group of {n}; "
                            "use more samples for the BatchNorm pass (bn_samples) or a larger bn_batch")
        out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        var = invstd.double().pow(-2) - self.eps  # biased batch variance
        collected.append((index, n, mean, var))
        return out

    return forward


@contextmanager
def train_mode_statistics(modules: Sequence[_BatchNorm]) -> Iterator[list]:
    """Within the block the ``modules`` normalize with batch statistics (training mode) and
    append ``(layer index, values per channel, mean, biased variance)`` for every call to the
    yielded list. Their running statistics are not touched; the caller empties the list."""
    collected: list = []
    for i, m in enumerate(modules):
        m.forward = types.MethodType(_train_forward(collected, i), m)
    try:
        yield collected
    finally:
        for m in modules:
            del m.forward


@torch.inference_mode()
def recompute_statistics(model: nn.Module, x: Tensor, bn_batch: int = BN_BATCH, *,
                         modules: Sequence[_BatchNorm] | None = None,
                         prepare: Callable[[Tensor], Tensor] | None = None) -> None:
    """Set ``model``'s BatchNorm running statistics to those of the samples ``x`` (the
    definition at the top of this module), in place; nothing else of the model changes
    (integer buffers such as ``num_batches_tracked`` included).

    ``modules``: the layers to recompute (default :func:`batchnorms`); ``prepare`` is applied
    to every group before the forward (the engine's channels_last). Autocast, if wanted, is
    the caller's context."""
    modules = batchnorms(model) if modules is None else list(modules)
    if not modules:
        return
    pool = Pool(len(modules))
    with train_mode_statistics(modules) as collected:
        for start, stop in group_bounds(len(x), bn_batch):
            group = x[start:stop]
            model(group if prepare is None else prepare(group))
            for layer, n, mean, var in collected:
                pool.add(layer, n, mean, var)
            collected.clear()
    for i, m in enumerate(modules):
        stats = pool.result(i)
        if stats is None:  # never reached by the forward: reset, as update_bn leaves it
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        else:
            m.running_mean.copy_(stats[0])
            m.running_var.copy_(stats[1])

"""Hessian-vector products of a per-sample-mean loss, and the spectral algorithms built on them.

The objective is always ``L(w) = (1/n) sum_i l_i(w)``: a per-sample mean over a dataset held
as device-resident batches (the whole split, or a fixed subset). :class:`Objective` takes a
*generic* per-sample loss closure ``fn(w, batch) -> (b,) losses`` of a flat parameter
vector ``w``, so any function can be studied (the tests use an exact quadratic
``1/2 w^T H w``); :meth:`Objective.for_model` builds the cross-entropy closure of a model
through ``torch.func.functional_call`` with BatchNorm in eval mode (its running statistics
are constants of the objective; the analysis recomputes them first, as the engine does).

Hessian-vector products (:meth:`Objective.hvp`) are accumulated over the batches in float64
and divided by ``n``. Four implementations, all exact to float32 round-off (they agree to
~5e-7 relative):

* ``"grad-of-jvp"``: reverse-over-forward, ``autograd.grad(torch.func.jvp(f, (w,), (v,))[1], w)``:
  the gradient of the directional derivative ``v . grad f``;
* ``"jvp-of-grad"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(f), (w,), (v,))``;
* ``"double-backward"``: ``g = autograd.grad(f, w, create_graph=True)``, then
  ``autograd.grad(g, w, v)`` (what PyHessian does with a data loader);
* ``"retained-graph"``: the same, with the graph of ``g`` built once per point and kept
  (``retain_graph=True``), so each product is one backward pass through it (what PyHessian
  does with one batch). Only when the data is one batch (per process): keeping the graphs
  of several batches would hold all their activations at once, past the memory cap that
  sized the batches.

The first three rebuild the forward pass for every product; that is what makes the fourth
cheaper when it applies (``bench/sharpness.py --hvp-cost``, cnn1d, 1000 MNIST-1D samples in
one batch, 1 thread, load ~3.5 on 2 cores: 1.76x a gradient, against 2.50x for grad-of-jvp,
2.67x for double backward and 3.46x for jvp-of-grad).

``"auto"`` measures: the first product times two products of each kind (interleaved) on the
first (full-size) batch and keeps the fastest for the objective's lifetime (a kind that fails,
e.g. an op without a forward-mode formula, is left out); ``Objective.timings`` keeps the
numbers. With a ``choice_cache`` (the sharpness analysis uses
``landscape.data.cache_root() / "hvp-choice.json"``) the choice is kept per workload (model
architecture, device, dtype, batch shape, threads, torch version) and later objectives of the
same workload take it without measuring: the ~7 products of a measurement dominate a small
run. Delete the file to measure again. Measured on the development machine (2-core AMD EPYC
Zen 4, torch 2.14, 2 threads, NCHW, best of 2-5 interleaved rounds on a quiet moment; cost as
a multiple of one gradient on the same batch; before "retained-graph" existed)::

    model, batch                     grad      grad-of-jvp     jvp-of-grad     double backward
    cnn1d, MNIST-1D-shaped, 256      6.5 ms    15 ms (2.29x)   22 ms (3.37x)   19 ms (2.87x)
    cnn1d, 1024                      26 ms     52 ms (1.97x)   76 ms (2.90x)   79 ms (3.00x)
    cnn1d, 4000                      75 ms     221 ms (2.94x)  266 ms (3.55x)  218 ms (2.90x)
    resnet20, 64 CIFAR-shaped        114 ms    397 ms (3.48x)  581 ms (5.09x)  450 ms (3.95x)
    resnet20, 256                    627 ms    1.70 s (2.71x)  3.98 s (6.34x)  2.35 s (3.76x)
    53-parameter MLP, 6 x 7 samples  5.9 ms    -               41 ms (7x)      13 ms (2.2x)

(``torch.func.grad`` around the jvp instead of ``autograd.grad``: 2.5-4.5x; ``vmap`` of
jvp-of-grad over several tangents: slower than a loop; ``is_grads_batched`` through a kept
graph: slower than a loop too.) Reverse-over-forward usually wins among the first three;
``torch.func``'s per-call overhead makes double backward the choice for tiny models, and on
a loaded machine the order changes (under 3-4x oversubscription jvp-of-grad measured 1.55x
on cnn1d), which is why "auto" measures instead of following a table. Several vectors are
looped inside the batch loop. No GPU was available: on CUDA the same measurement decides,
and ``bench/sharpness.py --device cuda`` reports all four.

Data parallel: an :class:`Objective` may hold only its process's share of the batches
(``shard``) and sum every accumulated quantity over the processes through a caller-supplied
``reduce`` (the sharpness analysis passes an all-reduce under torchrun); every process then
gets the same numbers and runs the same iterations of the algorithms below. "auto" decides
from the processes' mean timings, so all of them pick the same product (and uses no choice
cache: a file one process has read and another not yet would split them).

Algorithms (all take any symmetric operator ``matvec: (r, d) -> (r, d)``):

* :func:`lanczos` top-k (and bottom-k) eigenvalues, full reorthogonalization (classical
  Gram-Schmidt, twice), Ritz values from ``eigh`` of the tridiagonal, stopped when the Ritz
  residual bounds ``|beta_m s_mi|`` of the wanted values are below ``tol * max|theta|`` (the
  bottom ones below ``tol * |theta_i|``) and below the gaps to their neighbours, and, when
  asked, the top one's error bar excludes given thresholds (stability limits; :func:`side`);
* :func:`hutchinson` (Rademacher) and :func:`hutchpp` (Meyer et al. 2021) traces with a
  standard error; :func:`hutchinson` also splits the estimate over parameter blocks;
  :func:`hutchpp` can take a Lanczos run's Krylov basis as its low-rank part, for free;
* :func:`slq_density` stochastic Lanczos quadrature (Ubaru et al. 2017; Ghorbani et al. 2019):
  Gaussian-broadened spectral density on a grid, integrating to 1;
* gradient noise (:func:`gradient_noise`, :func:`trace_h_sigma`) from per-sample gradients
  (``torch.func.vmap``), never forming the covariance;
* the SGD linear-stability matrix of Wu et al. 2018 (:func:`sgd_stability`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

with warnings.catch_warnings():
    # Forward-mode AD (torch.func.jvp) loads torch's jvp decompositions on first use, and
    # they are compiled with torch.jit.script, which warns that it is deprecated: a warning
    # about torch's own internals on every run. Load them here, quietly.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from landscape.checkpoint import atomic_write_text

__all__ = [
    "HVP_METHODS", "DenseOperator", "Density", "GradientNoise", "HessianOperator", "LanczosResult", "Objective",
    "SGDStability", "TraceEstimate", "TraceHSigma", "gradient_noise", "hutchinson", "hutchpp", "lanczos",
    "lanczos_tridiagonals", "rademacher", "roundoff", "sgd_stability", "side", "slq_density", "trace_h_sigma",
]

HVP_METHODS = ("auto", "grad-of-jvp", "jvp-of-grad", "double-backward", "retained-graph")
CHOICE_FORMAT = "landscape-hvp-choice/1"
Batch = tuple[Tensor, ...]
PerSampleLoss = Callable[[Tensor, Batch], Tensor]
MatVec = Callable[[Tensor], Tensor]


# =========================================================================== objective


class Objective:
    """``L(w) = (1/n) sum_i l_i(w)`` from a per-sample loss closure and a list of batches.

    ``fn(w, batch)`` returns the ``(b,)`` per-sample losses of ``batch`` (a tuple of tensors
    with the sample dimension first) at the flat parameter vector ``w``. It must be a pure
    function of ``w`` (differentiable with ``torch.func``). ``n`` is the total number of
    samples, the sum of the batch lengths.

    Data parallel (several processes, e.g. under torchrun): every process passes the same
    ``batches`` (views of data it holds anyway) with ``shard=(rank, world)`` and keeps
    batches ``rank, rank + world, ...`` as :attr:`batches`; ``reduce(t)`` returns ``t``
    summed over the processes (an all-reduce). Every sum over the data (values, gradients,
    Hessian-vector products, per-sample statistics) is reduced before it is used, so every
    process gets the same numbers, each batch is computed exactly as by one process, and the
    algorithms below run the same iterations everywhere. ``n`` stays the global count. This
    module knows nothing of torch.distributed: the caller supplies ``reduce``.
    """

    def __init__(self, fn: PerSampleLoss, batches: Sequence[Batch], *, hvp_method: str = "auto",
                 reduce: Callable[[Tensor], Tensor] | None = None, shard: tuple[int, int] = (0, 1),
                 choice_cache: tuple[str | Path, str] | None = None):
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method must be one of {HVP_METHODS}, got {hvp_method!r}")
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.fn = fn
        self.all_batches = [tuple(b) for b in batches]
        if not self.all_batches:
            raise ValueError("an objective needs at least one batch")
        self.reduce, self.shard = reduce, (rank, world)
        self.batches = self.all_batches[rank::world]  # this process's share (all of them alone)
        self.n = sum(len(b[0]) for b in self.all_batches)
        # One batch per process: its gradient graph can be kept between products ("retained-graph").
        self.single_batch = len(self.all_batches) <= world
        if hvp_method == "retained-graph" and not self.single_batch:
            raise ValueError(f"hvp_method 'retained-graph' keeps the gradient graph of one batch; the data is "
                             f"{len(self.all_batches)} batches")
        self.requested_method = hvp_method
        self._method: str | None = None if hvp_method == "auto" else hvp_method
        self.hvp_count = 0  # Hessian-vector products computed (one per vector, over all the data)
        self.grad_count = 0
        self.timings: dict[str, float] = {}  # seconds per batch product of each kind ("auto")
        # "auto" remembers its choice in a JSON file under a key naming the workload (model,
        # device, dtype, batch shape). Not under data parallel: every process must make the same
        # choice, and a file one of them has not read yet would split them.
        self.choice_cache = None if reduce is not None else choice_cache
        self.choice_source: str | None = None  # "measured" or "cache" once "auto" has chosen
        self._graph: tuple[Batch, Tensor, Tensor] | None = None  # retained-graph: (batch, leaf w, its gradient)

    def reduce_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes sharing the data (``t`` itself for one process)."""
        return t if self.reduce is None else self.reduce(t)

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_model(cls, model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor],
                  x: Tensor, y: Tensor, *, batch_size: int, hvp_method: str = "auto",
                  channels_last: bool = False, reduce: Callable[[Tensor], Tensor] | None = None,
                  shard: tuple[int, int] = (0, 1),
                  choice_cache: str | Path | None = None) -> tuple["Objective", Tensor, "ParamSpace"]:
        """Mean cross-entropy of ``model`` over ``(x, y)`` as a function of its parameters.

        ``params``: the trainable tensors (their values give the returned point ``w``);
        ``constants``: every other state entry (BatchNorm running statistics, integer
        buffers), held fixed. The model runs in eval mode. Returns ``(objective, w, space)``
        where ``space`` maps the flat ``w`` to named tensors and back. ``reduce``/``shard``:
        data parallel, as in the class docstring (every process passes the whole ``x, y``).
        ``choice_cache``: a JSON file where ``"auto"`` keeps its choice per (architecture,
        device, dtype, batch shape, threads, torch version); None measures every time.
        """
        model = model.eval()
        space = ParamSpace({k: tuple(v.shape) for k, v in params.items()})
        w = space.flatten(params).detach()
        constants = {k: v.detach() for k, v in constants.items()}

        def fn(wv: Tensor, batch: Batch) -> Tensor:
            inputs, targets = batch
            logits = functional_call(model, {**space.unflatten(wv), **constants}, (inputs,))
            logits = logits if logits.dtype == torch.float64 else logits.float()
            return F.cross_entropy(logits, targets, reduction="none")

        batches = []
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size]
            if channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            batches.append((xb, y[start : start + batch_size]))
        cache = None
        if choice_cache is not None:
            cache = (choice_cache, _choice_key(model, space, w, batches, shard[1]))
        return cls(fn, batches, hvp_method=hvp_method, reduce=reduce, shard=shard, choice_cache=cache), w, space

    # ------------------------------------------------------------------ values and gradients

    def _total(self, wv: Tensor, batch: Batch) -> Tensor:
        return self.fn(wv, batch).sum()

    @torch.no_grad()
    def value(self, w: Tensor) -> float:
        """``L(w)``, summed in float64."""
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        for batch in self.batches:
            total += self.fn(w, batch).double().sum()
        return float(self.reduce_sum(total)) / self.n

    def value_and_grad(self, w: Tensor) -> tuple[float, Tensor]:
        """``(L(w), grad L(w))``; the gradient accumulated in float64, returned in ``w``'s dtype."""
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        g = torch.zeros(w.shape, dtype=torch.float64, device=w.device)
        for batch in self.batches:
            wv = w.detach().requires_grad_(True)
            loss = self._total(wv, batch)
            (gb,) = torch.autograd.grad(loss, wv)
            total += loss.detach().double()
            g += gb.double()
        if self.reduce is not None:  # one all-reduce for both
            both = self.reduce(torch.cat([total.reshape(1), g]))
            total, g = both[0], both[1:]
        self.grad_count += 1
        return float(total) / self.n, (g / self.n).to(w.dtype)

    # ------------------------------------------------------------------ Hessian-vector products

    @property
    def method(self) -> str:
        """The HVP implementation in use (``"auto"`` until the first product measured both)."""
        return self._method or "auto"

    def hvp(self, w: Tensor, v: Tensor) -> Tensor:
        """``H(w) v`` for ``v`` of shape ``(d,)`` or a block ``(r, d)`` (one product per row)."""
        single = v.dim() == 1
        vs = v.unsqueeze(0) if single else v
        vs = vs.to(dtype=w.dtype, device=w.device)
        out = torch.zeros(vs.shape, dtype=torch.float64, device=w.device)
        if self._method is None:
            self._method = self._cached_choice() or self._measure(w, vs[:1])
        kernel = self._kernels()[self._method]
        for batch in self.batches:
            out += kernel(w, vs, batch)
        out = self.reduce_sum(out)
        self.hvp_count += len(vs)
        out = (out / self.n).to(w.dtype)
        return out[0] if single else out

    def _kernels(self) -> dict[str, Callable[[Tensor, Tensor, Batch], Tensor]]:
        kernels = {"grad-of-jvp": self._hvp_grad_of_jvp, "jvp-of-grad": self._hvp_jvp,
                   "double-backward": self._hvp_double_backward}
        if self.single_batch:
            kernels["retained-graph"] = self._hvp_retained
        return kernels

    def _measure(self, w: Tensor, v: Tensor) -> str:
        """``"auto"``: time products of each kind on the first (full-size) batch (two
        interleaved rounds, best of each), keep the fastest.

        Each kind is tried on two samples first; one that fails (an op without a forward-mode
        formula) is left out. "retained-graph" then builds its graph on the batch, untimed (a
        cost paid once per point, not per product), and the timed rounds follow. The timings
        stay in ``self.timings``. Data parallel: the choice is made from the mean of the
        processes' timings (a kind that failed anywhere is out), so every process picks the
        same kind. With a ``choice_cache`` the choice is written there.
        """
        names = list(self._kernels())
        # A process without batches has nothing to time: it adds 0 and is not counted.
        best = {name: math.inf if self.batches else 0.0 for name in names}
        untimed = None  # the only kind that works here: nothing to compare
        if self.batches:
            batch = self.batches[0]
            small = tuple(t[:2] for t in batch)
            kernels = {}
            for name, f in self._kernels().items():
                try:
                    f(w, v, small)
                    kernels[name] = f
                except (RuntimeError, NotImplementedError):
                    pass
            if len(kernels) == 1:
                untimed = next(iter(kernels))
                best[untimed] = 0.0
            else:
                if "retained-graph" in kernels:
                    kernels["retained-graph"](w, v, batch)
                for _ in range(2):  # two interleaved rounds, best of each: robust to a drifting load
                    for name, f in kernels.items():
                        _sync(w.device)
                        t0 = time.perf_counter()
                        f(w, v, batch)
                        _sync(w.device)
                        best[name] = min(best[name], time.perf_counter() - t0)
        if self.reduce is not None:
            # The same choice on every process: mean over the processes that measured.
            local = torch.tensor([best[n] for n in names] + [float(bool(self.batches))], dtype=torch.float64)
            total = self.reduce(local).tolist()
            best = {n: t / total[-1] for n, t in zip(names, total[:-1])}
        self.timings.update({n: t for n, t in best.items() if n != untimed})
        choice = min(best, key=best.__getitem__)
        self.choice_source = "measured"
        if self.choice_cache is not None:
            _store_choice(*self.choice_cache, choice, self.timings)
        return choice

    def _cached_choice(self) -> str | None:
        """The choice ``"auto"`` made before for the same workload (None: measure)."""
        if self.choice_cache is None:
            return None
        entry = _read_choices(self.choice_cache[0]).get(self.choice_cache[1])
        if not isinstance(entry, dict) or entry.get("method") not in self._kernels():
            return None
        timings = entry.get("timings")
        if isinstance(timings, dict):
            self.timings.update({k: float(t) for k, t in timings.items() if isinstance(t, (int, float))})
        self.choice_source = "cache"
        return str(entry["method"])

    def _hvp_jvp(self, w: Tensor, vs: Tensor, batch: Batch) -> Tensor:
        g = grad(lambda wv: self._total(wv, batch))
        return torch.stack([jvp(g, (w.detach(),), (v,))[1].double() for v in vs])

    def _hvp_grad_of_jvp(self, w: Tensor, vs: Tensor, batch: Batch) -> Tensor:
        out = []
        for v in vs:
            wv = w.detach().requires_grad_(True)
            d = jvp(lambda x: self._total(x, batch), (wv,), (v,))[1]  # directional derivative v . grad
            (hv,) = torch.autograd.grad(d, wv)
            out.append(hv.double())
        return torch.stack(out)

    def _hvp_double_backward(self, w: Tensor, vs: Tensor, batch: Batch) -> Tensor:
        wv = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self._total(wv, batch), wv, create_graph=True)
        out = []
        for i, v in enumerate(vs):
            (hv,) = torch.autograd.grad(g, wv, v, retain_graph=i < len(vs) - 1)
            out.append(hv.detach().double())
        return torch.stack(out)

    def _hvp_retained(self, w: Tensor, vs: Tensor, batch: Batch) -> Tensor:
        """Double backward through a gradient graph built once per (point, batch) and kept,
        as PyHessian does with one batch: a product is then one backward pass through it."""
        wv, g = self._gradient_graph(w, batch)
        return torch.stack([torch.autograd.grad(g, wv, v, retain_graph=True)[0].double() for v in vs])

    def _gradient_graph(self, w: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        if self._graph is None or self._graph[0] is not batch or not torch.equal(self._graph[1].detach(), w):
            self._graph = None  # free the old graph before building the next
            wv = w.detach().clone().requires_grad_(True)  # a copy: the caller may change w in place
            (g,) = torch.autograd.grad(self._total(wv, batch), wv, create_graph=True)
            self._graph = (batch, wv, g)
        return self._graph[1], self._graph[2]

    def release(self) -> None:
        """Free the kept gradient graph ("retained-graph"); the next product rebuilds it."""
        self._graph = None

    def operator(self, w: Tensor) -> "HessianOperator":
        """The Hessian at ``w`` as a symmetric operator for the algorithms below."""
        return HessianOperator(self, w)

    # ------------------------------------------------------------------ per-sample quantities

    def samples(self, indices: Tensor | None = None, chunk: int = 64) -> Iterator[tuple[Tensor, Batch]]:
        """Chunks ``(global indices, batch)`` of this process's samples (all, or those in ``indices``)."""
        for idx, batch, mine in self.chunks(indices, chunk):
            if mine:
                yield idx, batch

    def chunks(self, indices: Tensor | None = None, chunk: int = 64) -> Iterator[tuple[Tensor, Batch, bool]]:
        """``(global indices, batch, mine)``: the chunks of *every* process's samples (all, or
        those in ``indices``), in the same order on every process; ``mine``: this process
        computes it. One process: ``mine`` is always True."""
        offsets = np.cumsum([0] + [len(b[0]) for b in self.all_batches])
        rank, world = self.shard
        wanted = None if indices is None else np.sort(np.asarray(indices.cpu() if isinstance(indices, Tensor)
                                                                   else indices, dtype=np.int64))
        for bi, batch in enumerate(self.all_batches):
            lo, hi = int(offsets[bi]), int(offsets[bi + 1])
            if wanted is None:
                local = np.arange(hi - lo)
            else:
                local = wanted[(wanted >= lo) & (wanted < hi)] - lo
            for s in range(0, len(local), chunk):
                part = local[s : s + chunk]
                if len(part) == hi - lo:
                    sub = batch
                else:
                    idx = torch.as_tensor(part, device=batch[0].device)
                    sub = tuple(t[idx] for t in batch)
                yield torch.as_tensor(part + lo), sub, bi % world == rank

    def per_sample_grads(self, w: Tensor, batch: Batch) -> Tensor:
        """``(b, d)`` gradients of the individual losses of ``batch`` (``torch.func.vmap``)."""
        w = w.detach()

        def one(*sample: Tensor) -> Tensor:
            return grad(lambda wv: self.fn(wv, tuple(t.unsqueeze(0) for t in sample)).sum())(w)

        return vmap(one)(*batch)

    def per_sample_hessian_pass(self, w: Tensor, v: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(sum_i H_i v, sum_i H_i (H_i v))`` over the samples of ``batch`` (float64).

        ``H_i`` is the Hessian of the single loss ``l_i``; per-sample forward-over-reverse
        products under ``torch.func.vmap``.
        """
        w = w.detach()
        v = v.to(w.dtype)

        def one(*sample: Tensor) -> tuple[Tensor, Tensor]:
            g = grad(lambda wv: self.fn(wv, tuple(t.unsqueeze(0) for t in sample)).sum())
            u = jvp(g, (w,), (v,))[1]
            return u, jvp(g, (w,), (u,))[1]

        u, hu = vmap(one)(*batch)
        return u.double().sum(0), hu.double().sum(0)


@dataclass
class ParamSpace:
    """Named parameter tensors <-> one flat vector (in the given order)."""

    shapes: dict[str, tuple[int, ...]]

    def __post_init__(self) -> None:
        self.slices: dict[str, slice] = {}
        offset = 0
        for name, shape in self.shapes.items():
            k = math.prod(shape)
            self.slices[name] = slice(offset, offset + k)
            offset += k
        self.dim = offset

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.shapes])

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        return {n: w[s].reshape(self.shapes[n]) for n, s in self.slices.items()}


def _choice_key(model: nn.Module, space: "ParamSpace", w: Tensor, batches: list[Batch], world: int) -> str:
    """What decides which HVP kind is fastest: the architecture (module tree and parameter
    shapes, hashed), device, dtype, the first batch's shape and layout, whether the data is one
    batch (then "retained-graph" competes), intra-op threads and the torch version."""
    arch = hashlib.sha256((repr(model) + repr(sorted(space.shapes.items()))).encode()).hexdigest()[:16]
    device = w.device
    where = f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    x = batches[0][0]
    return json.dumps({"model": type(model).__name__, "architecture": arch, "device": where, "dtype": str(w.dtype),
                       "batch": list(x.shape), "channels_last": bool(x.dim() == 4 and not x.is_contiguous()),
                       "one_batch": len(batches) <= world, "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, sort_keys=True)


def _read_choices(path: str | Path) -> dict[str, Any]:
    """The cached choices; {} when the file is missing, unreadable or not ours (a corrupt
    cache only costs a measurement)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CHOICE_FORMAT or not isinstance(data.get("choices"), dict):
        return {}
    return data["choices"]


def _store_choice(path: str | Path, key: str, method: str, timings: dict[str, float]) -> None:
    choices = _read_choices(path)
    choices[key] = {"method": method, "timings": {k: v for k, v in timings.items() if math.isfinite(v)},
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:  # a read-only cache directory costs a measurement next time, nothing else
        atomic_write_text(path, json.dumps({"format": CHOICE_FORMAT, "choices": choices}, indent=1, sort_keys=True))
    except OSError:
        pass


class HessianOperator:
    """``v -> H(w) v`` (blocks of rows at once) with ``dim``, ``dtype`` and ``device``."""

    def __init__(self, objective: Objective, w: Tensor):
        self.objective, self.w = objective, w.detach()
        self.dim, self.dtype, self.device = w.numel(), w.dtype, w.device

    def __call__(self, v: Tensor) -> Tensor:
        return self.objective.hvp(self.w, v)


class DenseOperator:
    """A symmetric matrix as an operator (tests, small problems)."""

    def __init__(self, matrix: Tensor):
        self.matrix = matrix
        self.dim, self.dtype, self.device = matrix.shape[0], matrix.dtype, matrix.device

    def __call__(self, v: Tensor) -> Tensor:
        return v @ self.matrix  # symmetric: (H v^T)^T = v H


def _attrs(op: Any, dim: int | None, dtype: torch.dtype | None, device: Any) -> tuple[int, torch.dtype, Any]:
    return (dim if dim is not None else op.dim, dtype or getattr(op, "dtype", torch.float32),
            device if device is not None else getattr(op, "device", "cpu"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rademacher(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
    """+-1 entries, drawn on the CPU from ``generator`` (device independent)."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products in float64."""
    return (a.double() * b.double()).sum(-1)


# =========================================================================== Lanczos


@dataclass
class Tridiagonal:
    """One Lanczos run: ``alpha`` (m,), ``beta`` (m-1,) off-diagonal, and its basis if kept."""

    alpha: np.ndarray
    beta: np.ndarray
    last_beta: float  # beta_m, the residual norm after the last step (0 at an invariant subspace)
    basis: Tensor | None = None  # (m, d)

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def matrix(self) -> np.ndarray:
        return np.diag(self.alpha) + np.diag(self.beta, 1) + np.diag(self.beta, -1)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of T (columns); NaN at a diverged point."""
        t = self.matrix()
        if not np.isfinite(t).all():  # NaN/inf curvature: eigh would raise LinAlgError
            return np.full(len(t), np.nan), np.full(t.shape, np.nan)
        return np.linalg.eigh(t)


def lanczos_tridiagonals(
    matvec: MatVec,
    starts: Tensor,
    steps: int,
    *,
    keep_basis: bool = False,
    restart_generator: torch.Generator | None = None,
    stop: Callable[[list[Tridiagonal]], bool] | None = None,
    basis_device: Any = None,
) -> list[Tridiagonal]:
    """``r`` Lanczos runs in lockstep (one block matvec per step for all active runs).

    ``starts`` (r, d): start vectors (normalized here). Full reorthogonalization against
    the run's whole basis, twice (CGS2; alpha and beta in float64). A run whose residual
    vanishes (an invariant subspace) ends there, unless ``restart_generator`` is given: then
    it continues from a fresh random vector orthogonal to its basis, with a zero coupling
    (so T stays exact and all of the spectrum stays reachable: top-k mode). ``stop(runs)``
    is asked after every step (with the tridiagonals so far) and ends all runs early.
    """
    r, d = starts.shape
    dtype, device = starts.dtype, starts.device
    steps = int(min(steps, d))
    bdev = device if basis_device is None else torch.device(basis_device)
    basis = torch.zeros((r, steps + 1, d), dtype=dtype, device=bdev)
    v = starts / starts.double().norm(dim=1, keepdim=True).to(dtype)
    basis[:, 0] = v.to(bdev)
    alphas = np.zeros((r, steps))
    betas = np.zeros((r, steps))
    lengths = np.zeros(r, dtype=np.int64)
    active = np.ones(r, dtype=bool)
    prev = torch.zeros_like(v)
    prev_beta = torch.zeros(r, dtype=torch.float64, device=device)
    scale = np.zeros(r)
    eps = torch.finfo(dtype).eps

    def runs() -> list[Tridiagonal]:
        out = []
        for i in range(r):
            m = int(lengths[i])
            out.append(Tridiagonal(alphas[i, :m].copy(), betas[i, : max(m - 1, 0)].copy(),
                                   float(betas[i, m - 1]) if m else 0.0,
                                   basis[i, :m] if keep_basis else None))
        return out

    for j in range(steps):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        it = torch.as_tensor(idx, device=device)
        cur = v[it]
        w = matvec(cur).to(dtype)
        a = _dot(cur, w)
        w = w - a.to(dtype)[:, None] * cur - prev_beta[it].to(dtype)[:, None] * prev[it]
        # (a, j+1, d): a view while every run is active; the basis dtype (no float64 copy of it).
        block = (basis[:, : j + 1] if len(idx) == r else basis[idx, : j + 1]).to(device)
        for _ in range(2):  # classical Gram-Schmidt, "twice is enough" (Kahan/Parlett)
            coeff = torch.einsum("ajd,ad->aj", block, w)
            w = w - torch.einsum("aj,ajd->ad", coeff, block)
        b = w.double().norm(dim=1)
        a_np, b_np = a.cpu().numpy(), b.cpu().numpy()
        for pos, i in enumerate(idx):
            alphas[i, j], betas[i, j] = a_np[pos], b_np[pos]
            lengths[i] = j + 1
            scale[i] = max(scale[i], abs(a_np[pos]), b_np[pos])
        new_v = torch.zeros_like(w)
        for pos, i in enumerate(idx):
            small = b_np[pos] <= 100 * eps * max(scale[i], 1e-300) or j + 1 >= d
            if not small:
                new_v[pos] = w[pos] / b[pos].to(dtype)
            elif restart_generator is not None and j + 1 < d:
                # Invariant subspace: restart orthogonally (coupling 0), keep going.
                betas[i, j] = 0.0
                q = torch.randn(d, generator=restart_generator, dtype=torch.float64).to(device)
                blk = basis[i, : j + 1].to(device).double()
                for _ in range(2):
                    q = q - blk.T @ (blk @ q)
                new_v[pos] = (q / q.norm()).to(dtype)
            else:
                betas[i, j] = 0.0
                active[i] = False
        prev = prev.clone()
        prev[it] = cur
        prev_beta = prev_beta.clone()
        prev_beta[it] = torch.as_tensor(betas[idx, j], device=device)
        v = v.clone()
        v[it] = new_v
        for pos, i in enumerate(idx):
            if active[i] and j + 1 < steps:
                basis[i, j + 1] = new_v[pos].to(bdev)
        if stop is not None and stop(runs()):
            break
    return runs()


@dataclass
class LanczosResult:
    """Extreme eigenvalues from Lanczos.

    ``eigenvalues``: the k algebraically largest, descending; ``smallest``: the k
    algebraically smallest, ascending (None unless asked); ``residuals``/``smallest_residuals``:
    Ritz residual bounds ``|beta_m s_mi|`` (each Ritz value is within that distance of an
    eigenvalue); ``roundoff``: the error the operator's own rounding allows on any Ritz value
    (:func:`roundoff`); ``ritz_values``: every Ritz value of the last tridiagonal; ``steps``:
    matvecs used; ``converged``: every wanted value met its test (see :func:`lanczos`).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    smallest: np.ndarray | None
    smallest_residuals: np.ndarray | None
    ritz_values: np.ndarray
    steps: int
    converged: bool
    tol: float
    vectors: Tensor | None = None  # (k, d) Ritz vectors of `eigenvalues` when asked
    roundoff: float = 0.0
    basis: Tensor | None = None  # (steps, d) orthonormal Krylov basis Q when asked (return_basis)
    basis_trace: float = math.nan  # tr(Q^T H Q) = tr(T), the sum of the alphas: no product needed

    @property
    def errors(self) -> np.ndarray:
        """Error bars of ``eigenvalues``: the residual bound, at least the round-off."""
        return np.maximum(self.residuals, self.roundoff)


def roundoff(dtype: torch.dtype, scale: float) -> float:
    """What rounding alone can move a Ritz value of an operator of norm ``scale`` computed in
    ``dtype``: ``100 eps scale``. Hessian-vector products in float32 agree between the
    kinds to ~5e-7 relative (1e-5 allows for accumulation over batches and the reduction);
    a residual bound below it says nothing more."""
    return 100 * torch.finfo(dtype).eps * scale


def side(value: float, error: float, limit: float) -> int | None:
    """Where ``value +- error`` lies against ``limit``: 1 above, -1 below, None when the error
    bar holds the limit (the comparison is undetermined at this precision)."""
    if value - error > limit:
        return 1
    if value + error < limit:
        return -1
    return None


def lanczos(
    matvec: MatVec,
    k: int = 5,
    *,
    smallest: bool = False,
    max_steps: int | None = None,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    start: Tensor | None = None,
    return_vectors: bool = False,
    return_basis: bool = False,
    basis_device: Any = None,
    separate: Sequence[float] = (),
) -> LanczosResult:
    """The k algebraically largest (and with ``smallest`` also the k smallest) eigenvalues.

    Single-vector Lanczos with full reorthogonalization; after each step the tridiagonal T
    is diagonalized (``eigh``) and the run stops once every wanted Ritz value ``theta_i``
    with residual bound ``r_i = |beta_m s_mi|`` (an eigenvalue lies within ``r_i`` of
    ``theta_i``; the error is usually ``r_i^2`` over the gap) passes, or after ``max_steps``
    matvecs (default ``min(dim, max(40, 4k + 20))``):

    * top k: ``r_i <= tol * max|theta|``;
    * bottom k (``smallest``): ``r_i <= max(tol * |theta_i|, roundoff)``, tolerance relative to
      the value itself: the bottom of a Hessian sits near zero, where ``tol * max|theta|`` can
      exceed the values and the gaps between them, and a Ritz value that straddles two close
      eigenvalues (residual about half their distance) passes it while the second copy has
      not appeared yet;
    * every wanted value: ``r_i`` below the distance to the nearest other Ritz value (a
      Ritz value inside another's error bar means the two are not resolved yet);
    * ``separate``: the top Ritz value's error bar ``max(r_1, roundoff)`` excludes each of these
      thresholds (a stability limit), so that a verdict against them is decided, if
      ``max_steps`` allow (:func:`side` then says which way; None when they did not).

    An exactly repeated eigenvalue is found once (one Krylov vector per eigenspace; block
    Lanczos would be needed for its multiplicity). ``return_basis`` keeps the orthonormal
    Krylov basis and ``tr(T)``: :func:`hutchpp` can deflate with it for free.
    """
    dim, dtype, device = _attrs(matvec, dim, dtype, device)
    if k < 1 or k > dim:
        raise ValueError(f"k must be in 1..{dim}, got {k}")
    generator = generator or torch.Generator().manual_seed(0)
    steps = int(min(dim, max_steps or max(40, 4 * k + 20)))
    if start is None:
        start = torch.randn(dim, generator=generator, dtype=torch.float64)
    start = start.reshape(1, dim).to(dtype=dtype, device=device)
    min_steps = min(dim, 2 * k + 2)

    def status(t: Tridiagonal) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        theta, s = t.ritz()
        return theta, s, np.abs(t.last_beta * s[-1]), roundoff(dtype, float(np.abs(theta).max()))

    def converged(t: Tridiagonal) -> bool:
        if not (np.isfinite(t.alpha).all() and np.isfinite(t.beta).all()):
            return True  # a diverged point: more steps cannot help, its eigenvalues are NaN
        if t.steps < min_steps:
            return False
        theta, _, res, floor = status(t)
        m = len(theta)
        scale = max(float(np.abs(theta).max()), 1e-300)
        top = np.arange(m - 1, max(m - 1 - k, -1), -1)
        ok = bool(np.all(res[top] <= tol * scale))
        if smallest:
            low = np.arange(min(k, m))
            ok = ok and bool(np.all(res[low] <= np.maximum(tol * np.abs(theta[low]), floor)))
            top = np.union1d(top, low)
        if m > 1:  # theta ascending: the nearest other Ritz value is a neighbour
            gaps = np.minimum(np.diff(theta, prepend=-np.inf), np.diff(theta, append=np.inf))
            ok = ok and bool(np.all(res[top] < gaps[top]))
        return ok and all(side(theta[-1], max(res[-1], floor), limit) is not None for limit in separate)

    (run,) = lanczos_tridiagonals(matvec, start, steps, keep_basis=return_vectors or return_basis,
                                  restart_generator=generator, stop=lambda rs: converged(rs[0]),
                                  basis_device=basis_device)
    theta, s, res, floor = status(run)
    order = np.argsort(-theta)
    kk = min(k, len(theta))
    top = order[:kk]
    low = np.argsort(theta)[:kk] if smallest else None
    vectors = None
    if return_vectors and run.basis is not None:
        vectors = (torch.as_tensor(s[:, top].T, dtype=torch.float64, device=run.basis.device)
                   @ run.basis.double()).to(dtype)
    done = (run.steps >= dim or converged(run)) and bool(np.isfinite(theta).all())
    return LanczosResult(theta[top], res[top], theta[low] if low is not None else None,
                         res[low] if low is not None else None, theta, run.steps, bool(done), tol, vectors,
                         floor, run.basis if return_basis else None, float(run.alpha.sum()))


# =========================================================================== traces


@dataclass
class TraceEstimate:
    """A stochastic trace estimate: ``value`` +- ``stderr`` (one standard error)."""

    value: float
    stderr: float
    method: str
    matvecs: int
    samples: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    blocks: np.ndarray | None = None  # per-block estimates (hutchinson with `segments`)
    blocks_stderr: np.ndarray | None = None


def _mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    m = len(samples)
    mean = float(samples.mean(axis=0)) if samples.ndim == 1 else samples.mean(axis=0)
    if m < 2:
        return mean, (float("nan") if samples.ndim == 1 else np.full(samples.shape[1:], np.nan))
    err = samples.std(axis=0, ddof=1) / math.sqrt(m)
    return mean, (float(err) if samples.ndim == 1 else err)


def hutchinson(
    matvec: MatVec,
    probes: int = 30,
    *,
    generator: torch.Generator | None = None,
    block: int = 8,
    segments: Tensor | None = None,
    num_segments: int | None = None,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(H) ~ mean_j z_j^T H z_j`` with Rademacher ``z_j``.

    Standard error: sample standard deviation of ``z^T H z`` over the probes / sqrt(probes).
    With ``segments`` (a (d,) int tensor giving each coordinate a block id), the same probes
    also estimate every diagonal-block trace ``tr(H_bb) ~ mean_j z_jb^T (H z_j)_b`` (unbiased:
    the cross terms vanish in expectation).
    """
    dim, dtype, device = _attrs(matvec, dim, dtype, device)
    generator = generator or torch.Generator().manual_seed(0)
    if probes < 1:
        raise ValueError("probes must be >= 1")
    values, per_block = [], []
    nb = int(num_segments if num_segments is not None else (int(segments.max()) + 1 if segments is not None else 0))
    for start in range(0, probes, block):
        z = rademacher((min(block, probes - start), dim), generator, dtype, device)
        hz = matvec(z)
        prod = z.double() * hz.double()
        values.append(prod.sum(1).cpu())
        if segments is not None:
            acc = torch.zeros((len(z), nb), dtype=torch.float64, device=prod.device)
            acc.index_add_(1, segments.to(prod.device), prod)
            per_block.append(acc.cpu())
    samples = torch.cat(values).numpy()
    value, err = _mean_stderr(samples)
    est = TraceEstimate(value, err, "hutchinson", probes, samples)
    if segments is not None:
        est.blocks, est.blocks_stderr = _mean_stderr(torch.cat(per_block).numpy())
    return est


def hutchpp(
    matvec: MatVec,
    matvecs: int = 30,
    *,
    generator: torch.Generator | None = None,
    block: int = 8,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    basis: Tensor | None = None,
    basis_trace: float | None = None,
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with a budget of ``matvecs`` products.

    ``S`` (d x m/3 Rademacher), ``Q = orth(H S)``; ``tr(H) ~ tr(Q^T H Q) +
    mean_j g_j^T (I - QQ^T) H (I - QQ^T) g_j`` over m/3 Rademacher ``g_j``. The first term is
    exact given ``Q``; the standard error is that of the second (Hutchinson on the deflated
    remainder, whose variance is what Hutch++ shrinks), so it is the error conditional on
    ``Q``, and the estimate is unbiased.

    ``basis`` (b, d) orthonormal rows with ``basis_trace = tr(basis H basis^T)``, e.g. the
    Krylov basis of the Lanczos run that found the top eigenvalues (``tr(T)``): when it has at
    least m/3 rows it is ``Q``, and the 2m/3 products that would build the sketch are not
    spent; the m/3 remainder probes are. The decomposition ``tr(H) = tr(Q^T H Q) +
    tr((I - QQ^T) H (I - QQ^T))`` holds for any orthonormal Q, and this Q is independent of the
    probes, so the estimate stays unbiased; a Krylov space that resolved the top of the
    spectrum deflates it at least as well as the one-step sketch ``H S`` (Chen & Hallman 2023,
    "Krylov-aware stochastic trace estimation"). ``matvecs`` then counts the probes only.
    """
    dim, dtype, device = _attrs(matvec, dim, dtype, device)
    generator = generator or torch.Generator().manual_seed(0)
    if matvecs < 3:
        raise ValueError("hutch++ needs a budget of at least 3 matvecs")
    k = min(matvecs // 3, dim)
    g_count = max(matvecs - 2 * k, 1)

    def apply(v: Tensor) -> Tensor:
        return torch.cat([matvec(v[i : i + block]).to(dtype) for i in range(0, len(v), block)])

    if basis is not None and basis_trace is not None and len(basis) >= k:
        q, low_rank, spent, method = basis.to(device=device, dtype=torch.float64), float(basis_trace), 0, \
            "hutch++ (Lanczos basis)"
    else:
        s = rademacher((k, dim), generator, dtype, device)
        hs = apply(s)
        q, _ = torch.linalg.qr(hs.double().T)  # (d, k), orthonormal columns
        q = q.T.contiguous()  # (k, d)
        hq = apply(q.to(dtype)).double()
        low_rank, spent, method = float((q * hq).sum()), 2 * k, "hutch++"
    g = rademacher((g_count, dim), generator, torch.float64, device)
    g = g - (g @ q.T) @ q
    hg = apply(g.to(dtype)).double()
    hg = hg - (hg @ q.T) @ q
    samples = (g * hg).sum(1).cpu().numpy()
    rest, err = _mean_stderr(samples)
    return TraceEstimate(low_rank + rest, err, method, spent + g_count, samples)


# =========================================================================== density


@dataclass
class Density:
    """Gaussian-broadened spectral density from stochastic Lanczos quadrature.

    ``values[i]`` is the density at ``grid[i]``: ``(1/runs) sum_runs sum_j tau_j
    N(grid; theta_j, sigma^2)`` with quadrature nodes ``theta`` (Ritz values) and weights
    ``tau`` (squared first components of T's eigenvectors, summing to 1 per run); it
    integrates to 1 (the grid reaches 6 sigma past the extreme nodes).
    """

    grid: np.ndarray
    values: np.ndarray
    nodes: np.ndarray  # (runs, steps), NaN-padded
    weights: np.ndarray  # (runs, steps), NaN-padded
    sigma: float
    matvecs: int


def slq_density(
    matvec: MatVec,
    runs: int = 4,
    steps: int = 60,
    *,
    points: int = 1000,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    generator: torch.Generator | None = None,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
) -> Density:
    """SLQ spectral density: ``runs`` Lanczos runs of ``steps`` from Rademacher starts.

    The runs advance in lockstep (one block matvec per step). ``sigma`` (absolute) or
    ``sigma_rel`` times the width of the node range sets the Gaussian broadening.
    """
    dim, dtype, device = _attrs(matvec, dim, dtype, device)
    generator = generator or torch.Generator().manual_seed(0)
    starts = rademacher((runs, dim), generator, dtype, device)
    tris = lanczos_tridiagonals(matvec, starts, steps)
    m = max(t.steps for t in tris)
    nodes = np.full((runs, m), np.nan)
    weights = np.full((runs, m), np.nan)
    for i, t in enumerate(tris):
        theta, s = t.ritz()
        nodes[i, : t.steps] = theta
        weights[i, : t.steps] = s[0] ** 2
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    width = hi - lo
    if sigma is None:
        sigma = sigma_rel * width if width > 0 else max(abs(hi), 1.0) * sigma_rel
    sigma = float(sigma)
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, points)
    values = np.zeros(points)
    for i in range(runs):
        ok = np.isfinite(nodes[i])
        diff = (grid[:, None] - nodes[i, ok][None, :]) / sigma
        values += (np.exp(-0.5 * diff**2) * weights[i, ok][None, :]).sum(1)
    values /= runs * sigma * math.sqrt(2 * math.pi)
    return Density(grid, values, nodes, weights, sigma, int(sum(t.steps for t in tris)))


# =========================================================================== gradient noise


@dataclass
class GradientNoise:
    """Per-sample gradient statistics at a point.

    ``Sigma = (1/n) sum_i (g_i - gbar)(g_i - gbar)^T`` (population normalization 1/n over the
    n samples of the objective), the covariance of one uniformly drawn sample's gradient;
    ``trace_sigma = (1/n) sum_i ||g_i||^2 - ||gbar||^2``.
    """

    loss: float
    grad: Tensor  # gbar, the full-batch gradient
    grad_norm: float
    trace_sigma: float
    n: int


def gradient_noise(objective: Objective, w: Tensor, *, chunk: int = 64) -> GradientNoise:
    """Mean gradient and ``tr(Sigma)`` from per-sample gradients (vmap), chunk by chunk
    (data parallel: each process its own samples, the sums reduced)."""
    d = w.numel()
    g = torch.zeros(d, dtype=torch.float64, device=w.device)
    sq = torch.zeros((), dtype=torch.float64, device=w.device)
    loss = torch.zeros((), dtype=torch.float64, device=w.device)
    for _, batch in objective.samples(chunk=chunk):
        gs = objective.per_sample_grads(w, batch).double()
        g += gs.sum(0)
        sq += (gs * gs).sum()
        with torch.no_grad():
            loss += objective.fn(w.detach(), batch).double().sum()
    if objective.reduce is not None:
        sums = objective.reduce(torch.cat([g, sq.reshape(1), loss.reshape(1)]))
        g, sq, loss = sums[:d], sums[d], sums[d + 1]
    n = objective.n
    g /= n
    trace = float(sq / n - g @ g)
    return GradientNoise(float(loss) / n, g.to(w.dtype), float(g.norm()), max(trace, 0.0), n)


@dataclass
class TraceHSigma:
    """``tr(H Sigma) = (1/n) sum_i c_i^T H c_i`` with ``c_i = g_i - gbar``
    (``= (1/n) sum_i g_i^T H g_i - gbar^T H gbar``), estimated from ``m`` of the ``n`` samples."""

    value: float
    stderr: float  # 0 when every sample is used (exact)
    samples_used: int
    n: int
    per_sample: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))


def trace_h_sigma(objective: Objective, w: Tensor, noise: GradientNoise, *, samples: int | None = None,
                  generator: torch.Generator | None = None, chunk: int = 64, block: int = 8) -> TraceHSigma:
    """``tr(H Sigma)`` without forming Sigma: one HVP per used sample.

    Estimator: draw ``m`` distinct samples uniformly (all of them when ``samples`` is None or
    >= n), ``T = (1/m) sum_{i in S} c_i^T H c_i`` with ``c_i = g_i - gbar`` (per-sample
    gradients by vmap, ``H c_i`` by HVPs over the whole objective). Unbiased for
    ``(1/n) sum_i c_i^T H c_i = tr(H Sigma)``; standard error ``sd(q_i)/sqrt(m) *
    sqrt(1 - m/n)`` (sampling without replacement), 0 when ``m = n``.

    Data parallel: the process holding a chunk of samples computes its ``c_i`` and the
    reduction hands them to every process (the others add zeros), since ``H c_i`` needs all
    the data; ``generator`` must be seeded alike everywhere (it picks the samples).
    """
    n = objective.n
    generator = generator or torch.Generator().manual_seed(0)
    m = n if samples is None or samples >= n else int(samples)
    idx = None if m == n else torch.randperm(n, generator=generator)[:m]
    gbar = noise.grad.to(w.dtype)
    q: list[float] = []
    for _, batch, mine in objective.chunks(idx, chunk=chunk):
        if mine:
            c = objective.per_sample_grads(w, batch) - gbar
        else:
            c = torch.zeros((len(batch[0]), w.numel()), dtype=w.dtype, device=w.device)
        c = objective.reduce_sum(c)  # the holder's rows on every process (exact: x + 0 = x)
        for s in range(0, len(c), block):
            cb = c[s : s + block]
            hc = objective.hvp(w, cb)
            q.extend(_dot(cb, hc).cpu().tolist())
    qs = np.asarray(q)
    value = float(qs.mean())
    if m == n:
        err = 0.0
    else:
        err = float(qs.std(ddof=1) / math.sqrt(m) * math.sqrt(1 - m / n)) if m > 1 else float("nan")
    return TraceHSigma(value, err, m, n, qs)


# =========================================================================== SGD stability


@dataclass
class SGDStability:
    """The linear-stability test of Wu, Ma & E (2018), Theorem 1, at one point.

    ``lambda_max_a`` = lambda_max((I - lr H)^2 + lr^2 (N - B)/(B (N - 1)) Sigma_H) with
    ``Sigma_H = (1/n) sum_i H_i^2 - H^2``; stable when it is <= 1, decided only when
    ``lambda_max_a +- error`` lies on one side of 1 (``stable`` None otherwise). ``nonuniformity`` =
    sqrt(lambda_max(Sigma_H)) (their "s"), with the necessary condition
    ``s <= sqrt(B (N - 1)/(N - B)) / lr``.
    """

    lambda_max_a: float
    nonuniformity: float
    nonuniformity_limit: float
    factor: float  # lr^2 (N - B)/(B (N - 1))
    stable: bool | None  # None: lambda_max_a is within `error` of 1 (undetermined)
    samples_used: int
    matvecs: int
    curvature: float = float("nan")  # u^T H u along the top eigenvector u of the matrix: < 0 means the
    #                                  instability is negative curvature (a saddle direction), not sharpness
    error: float = 0.0  # error bar of lambda_max_a (Ritz residual bound, at least the round-off)


def sgd_stability(objective: Objective, w: Tensor, lr: float, batch_size: int, train_size: int, *,
                  samples: int | None = None, generator: torch.Generator | None = None,
                  max_steps: int = 40, tol: float = 1e-3, chunk: int = 16) -> SGDStability:
    """Wu, Ma & E (NeurIPS 2018, "How SGD selects the global minima in over-parameterized
    learning: a dynamical stability perspective"), Theorem 1: a minimum ``x*`` is linearly
    stable (in mean square) for SGD with learning rate ``lr`` and batch size ``B`` (sampling
    without replacement from ``N`` training samples) if

        lambda_max( (I - lr H)^2 + lr^2 (N - B) / (B (N - 1)) * Sigma_H ) <= 1,

    ``H = (1/n) sum_i H_i``, ``Sigma_H = (1/n) sum_i H_i^2 - H^2``: the covariance of the
    per-sample Hessians, which is the covariance of the gradient noise per unit displacement
    in the linearized dynamics ``x_{k+1} - x* = (I - lr H_batch)(x_k - x*)``.

    Matrix-free: ``Sigma_H v = (1/m) sum_i H_i (u_i - ubar)`` with ``u_i = H_i v`` (per-sample
    forward-over-reverse products under vmap, so ``= mean_i H_i u_i - H_S ubar``), on ``m``
    uniformly drawn samples (all when ``samples`` is None or >= n; a subsample estimate is
    PSD and consistent but biased upwards in lambda_max). ``H`` in the first term is the
    full objective's. Data parallel: each process sums the per-sample products of its own
    samples; the sums are reduced.

    The verdict compares lambda_max with 1, and most of the matrix's spectrum sits near 1
    (every direction of small curvature), so Lanczos on the matrix itself stops, at
    ``tol * max|theta| ~ tol``, with a Ritz value that can be on the wrong side of 1. Lanczos
    runs on ``A - I`` instead (the same Krylov space; the Ritz values carry the digits of
    ``lambda_max - 1`` rather than of 1) and keeps going until the error bar of the top
    Ritz value excludes 0 (``separate``); ``stable`` is None (undetermined) when ``max_steps``
    ran out first.
    """
    n = objective.n
    generator = generator or torch.Generator().manual_seed(1)
    m = n if samples is None or samples >= n else int(samples)
    idx = None if m == n else torch.randperm(n, generator=generator)[:m]
    sub_batches = [b for _, b in objective.samples(idx, chunk=max(chunk, 1))]  # this process's
    sub_all = [b for _, b, _ in objective.chunks(idx, chunk=4096)]
    method = objective.method
    if method == "retained-graph" and len(sub_all) > objective.shard[1]:
        method = "double-backward"  # the subsample spans several batches: no single graph to keep
    sub = Objective(objective.fn, sub_all, hvp_method=method, reduce=objective.reduce, shard=objective.shard)
    factor = lr**2 * (train_size - batch_size) / (batch_size * (train_size - 1)) if train_size > 1 else 0.0
    count = {"mv": 0}

    def sigma_h(v: Tensor) -> Tensor:
        out = []
        for row in v:
            su = torch.zeros(row.numel(), dtype=torch.float64, device=row.device)
            shu = torch.zeros_like(su)
            for b in sub_batches:
                u, hu = objective.per_sample_hessian_pass(w, row, b)
                su += u
                shu += hu
            if objective.reduce is not None:
                both = objective.reduce(torch.cat([su, shu]))
                su, shu = both[: len(su)], both[len(su) :]
            ubar = (su / m).to(w.dtype)
            out.append((shu / m - sub.hvp(w, ubar).double()).to(w.dtype))
        return torch.stack(out)

    def shifted(v: Tensor) -> Tensor:  # A - I = -2 lr H + lr^2 H^2 + factor Sigma_H
        count["mv"] += len(v)
        hv = objective.hvp(w, v)
        hhv = objective.hvp(w, hv)
        return -2 * lr * hv + lr**2 * hhv + factor * sigma_h(v)

    d, dtype, device = w.numel(), w.dtype, w.device
    b_res = lanczos(shifted, 1, max_steps=max_steps, tol=tol, generator=generator, dim=d, dtype=dtype,
                    device=device, return_vectors=True, separate=(0.0,))
    s_res = lanczos(sigma_h, 1, max_steps=max_steps, tol=tol, generator=generator, dim=d, dtype=dtype,
                    device=device)
    shift, error = float(b_res.eigenvalues[0]), float(b_res.errors[0])
    verdict = side(shift, error, 0.0)
    curvature = float("nan")
    if b_res.vectors is not None:
        u = b_res.vectors[0]
        u = u / u.double().norm().to(u.dtype)
        curvature = float(_dot(u, objective.hvp(w, u)))
    s = math.sqrt(max(float(s_res.eigenvalues[0]), 0.0))
    limit = (math.sqrt(batch_size * (train_size - 1) / (train_size - batch_size)) / lr
             if train_size > batch_size else math.inf)
    return SGDStability(1.0 + shift, s, limit, factor, None if verdict is None else verdict < 0, m,
                        count["mv"] + s_res.steps + 1, curvature, error)

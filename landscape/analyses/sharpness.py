"""Sharpness at a solution: Hessian spectrum, trace, spectral density, gradient noise, stability.

``sharpness(CKPT)`` measures the Hessian of the per-sample mean cross-entropy over one split
(the whole split or the fixed ``--subset``), with BatchNorm in eval mode and its statistics
recomputed at the point from the train split (``bn="recompute"``, as every analysis scores
points; ``"keep"`` uses the checkpoint's own). Everything is matrix-free (landscape.hessian):

* top-k eigenvalues (Lanczos, full reorthogonalization), optionally the k smallest;
* trace: Hutch++ and/or Hutchinson (Rademacher), each with a standard error; Hutch++ takes
  the Krylov basis of the eigenvalue stage's Lanczos run as its low-rank part (free: those
  products are spent already), so of its budget only the remainder probes are spent;
* spectral density by stochastic Lanczos quadrature;
* gradient noise from per-sample gradients: ``tr(Sigma)``, ``tr(H Sigma)`` and the smoothing
  term ``(lr^2/2) tr(H Sigma_B)`` of Nitanda et al. (2024);
* stability: ``lambda_max`` against ``2/lr`` (GD; lr read from the checkpoint), against the
  momentum limit when the run used momentum beta (:func:`momentum_limit`: ``(2 + 2 beta)/lr``
  for heavy ball, Cohen et al. 2021; ``(2 + 2 beta)/(lr (1 + 2 beta))`` for Nesterov, read from
  the run config), and with ``noise`` the SGD linear-stability condition of Wu et al. (2018)
  for the run's batch size (:func:`landscape.hessian.sgd_stability` states it exactly). A
  verdict is "stable" or "unstable" only when the value's error bar (Ritz residual bound,
  at least the round-off) lies on one side of the limit; Lanczos keeps going until it does,
  within its steps, and the verdict is "undetermined" when they run out;
* SAM sharpness ``max_{||e|| <= rho} L(w + e) - L(w)``: first order and projected ascent;
* per layer: top eigenvalue and trace of each module's diagonal Hessian block.

``along=line.h5`` repeats the per-point quantities at every alpha of an interpolation result
(metrics shaped like ``alpha``), so "SWA is flatter than SGD" becomes a curve.

HDF5 (DESIGN.md): root ``eigenvalues`` (descending), ``trace`` (+ ``trace_stderr``),
``density/grid`` + ``density/values``, root attribute ``lr``; ``<split>/loss`` and
``<split>/accuracy`` at the point; every other quantity under the names listed in
:data:`DATASETS`. A killed run resumes: finished stages are kept in the ``.partial``
(per alpha with ``along``).

Under torchrun the data is shared out, not the work: each rank holds every ``world``-th
HVP batch, and every sum the objective accumulates (loss, gradient, Hessian-vector
products, per-sample statistics) is all-reduced in float64, so every rank runs the same
Lanczos/Hutchinson/SLQ iterations on the same numbers (seeded probes, "auto" HVP choice
from the ranks' mean timings). Rank 0 alone opens the file; the other ranks get what it
read (finished stages, pending points) by broadcast, in the same order on every rank.
The file equals a one-process run's up to float64 summation order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import distributed
from landscape.analyses import common
from landscape.analyses.common import AnalysisOptions, CheckpointLike, prepare, result_attrs, vector
from landscape.checkpoint import Checkpoint, file_sha256
from landscape.data import cache_root
from landscape.engine import Engine
from landscape.errors import UserError
from landscape.hessian import HVP_METHODS, Objective, gradient_noise, hutchinson, hutchpp, lanczos, \
    lanczos_tridiagonals, roundoff, sgd_stability, side, slq_density, trace_h_sigma
from landscape.store import ResultWriter, load_result

__all__ = ["DATASETS", "SharpnessOptions", "find_run_config", "momentum_limit", "sharpness", "summarize"]

TRACE_METHODS = ("hutchpp", "hutchinson", "both")

# What a sharpness file holds beyond the DESIGN.md names (all optional but `eigenvalues`).
DATASETS = {
    "eigenvalues": "k algebraically largest Hessian eigenvalues, descending (Lanczos)",
    "eigenvalue_residuals": "Ritz residual bounds |beta_m s_mi| of `eigenvalues`",
    "eigenvalues_smallest": "k algebraically smallest eigenvalues, ascending (--smallest)",
    "trace": "Hessian trace (Hutch++ unless --trace-method hutchinson)",
    "trace_stderr": "one standard error of `trace`",
    "trace_hutchinson": "Hutchinson estimate when both methods ran", "trace_hutchinson_stderr": "its standard error",
    "density/grid": "eigenvalue grid", "density/values": "SLQ density on the grid (integrates to 1)",
    "density/nodes": "SLQ quadrature nodes (runs x steps)", "density/weights": "SLQ weights (runs x steps)",
    "grad_norm": "||grad L|| at the point",
    "sam/first_order": "L(w + rho g/||g||) - L(w)", "sam/ascent": "best L(w + e) - L(w) over projected ascent",
    "sam/curve": "L(w + e_t) - L(w) after t = 0.. ascent steps",
    "noise/trace_sigma": "tr Sigma, Sigma the per-sample gradient covariance (1/n normalization)",
    "noise/trace_h_sigma": "tr(H Sigma)", "noise/trace_h_sigma_stderr": "its standard error (0: exact)",
    "noise/alignment": "tr(H Sigma) / (tr H tr Sigma / d): 1 for isotropic noise",
    "noise/smoothing": "(lr^2/2) (N-B)/(B(N-1)) tr(H Sigma): the objective-smoothing term of SGD",
    "stability/gd_limit": "2/lr", "stability/heavy_ball_limit": "(2 + 2 momentum)/lr (heavy-ball runs)",
    "stability/nesterov_limit": "(2 + 2 momentum)/(lr (1 + 2 momentum)) (Nesterov runs)",
    "stability/sgd_lambda_max": "lambda_max((I - lr H)^2 + lr^2 (N-B)/(B(N-1)) Sigma_H) (Wu et al. 2018)",
    "stability/nonuniformity": "s = sqrt(lambda_max(Sigma_H))", "stability/nonuniformity_limit": "sqrt(B(N-1)/(N-B))/lr",
    "by_layer/names": "modules", "by_layer/numel": "parameters per module",
    "by_layer/lambda_max": "top eigenvalue of the module's diagonal Hessian block",
    "by_layer/trace": "trace of the block (Hutchinson)", "by_layer/trace_stderr": "its standard error",
}


@dataclass
class SharpnessOptions:
    """What to measure (the common options -- split, subset, bn, device... -- are AnalysisOptions)."""

    top_k: int = 5
    smallest: bool = False
    lanczos_steps: int | None = None  # most matvecs of the top-k Lanczos (default max(40, 4k + 20))
    tol: float = 1e-4  # Ritz residual bound / max|theta|
    trace: bool = False
    trace_method: str = "hutchpp"
    trace_probes: int = 30  # Hutchinson probes, or the Hutch++ matvec budget
    density: bool = False
    density_runs: int = 4
    density_steps: int = 60
    density_points: int = 1000
    density_sigma: float = 0.01  # Gaussian width as a fraction of the spectrum's width
    noise: bool = False
    noise_samples: int | None = 64  # samples for tr(H Sigma) (None: all = exact)
    stability_samples: int | None = 256  # samples for Sigma_H in the SGD condition (None: all)
    batch_size_train: int | None = None  # SGD batch size when the run config does not say
    lr: float | None = None  # when the checkpoint has none
    sam: bool = True
    rho: float = 0.05
    sam_steps: int = 5
    by_layer: bool = False
    layer_steps: int = 20
    along: str | None = None
    hvp: str = "auto"
    hvp_batch: int | None = None  # samples per HVP batch (default: batch_size, capped by memory)

    def validate(self) -> None:
        checks = [
            (self.top_k >= 1, f"--top-k must be >= 1, got {self.top_k}"),
            (self.lanczos_steps is None or self.lanczos_steps >= 1, "--lanczos-steps must be >= 1"),
            (0 < self.tol < 1, f"--tol must be in (0, 1), got {self.tol}"),
            (self.trace_method in TRACE_METHODS, f"--trace-method {self.trace_method!r}: expected "
                                                  f"{', '.join(TRACE_METHODS)}"),
            (self.trace_probes >= (3 if self.trace_method != "hutchinson" else 2),
             f"--trace-probes must be >= 3 for hutch++ (>= 2 for hutchinson), got {self.trace_probes}"),
            (self.density_runs >= 1 and self.density_steps >= 2, "--density-runs >= 1 and --density-steps >= 2"),
            (self.density_points >= 10, "--density-points must be >= 10"),
            (self.density_sigma > 0, "--density-sigma must be > 0"),
            (self.noise_samples is None or self.noise_samples >= 2, "--noise-samples must be >= 2"),
            (self.stability_samples is None or self.stability_samples >= 2, "--stability-samples must be >= 2"),
            (self.batch_size_train is None or self.batch_size_train >= 1, "--batch-size-train must be >= 1"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            (self.rho > 0, f"--rho must be > 0, got {self.rho}"),
            (self.sam_steps >= 0, "--sam-steps must be >= 0"),
            (self.layer_steps >= 1, "--layer-steps must be >= 1"),
            (self.hvp in HVP_METHODS, f"--hvp {self.hvp!r}: expected {', '.join(HVP_METHODS)}"),
            (self.hvp_batch is None or self.hvp_batch >= 1, "--hvp-batch must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.along and (self.density or self.by_layer):
            raise UserError("--along measures per-point quantities; --density and --by-layer are for one "
                            "checkpoint (run them on the checkpoints themselves)")

    def identity(self) -> dict[str, Any]:
        """Options that change the numbers (stored as root attributes; a resume must match)."""
        d = asdict(self)
        for key in ("along", "hvp", "hvp_batch", "batch_size_train", "lr"):
            d.pop(key)
        if not self.trace:
            for key in ("trace_method", "trace_probes"):
                d.pop(key)
        if not self.density:
            for key in [k for k in d if k.startswith("density_")]:
                d.pop(key)
        if not self.noise:
            d.pop("noise_samples")
            d.pop("stability_samples")
        if not self.sam:
            d.pop("rho")
            d.pop("sam_steps")
        if not self.by_layer:
            d.pop("layer_steps")
        return {"options": json.dumps({k: v for k, v in d.items() if v is not None}, sort_keys=True)}


# =========================================================================== run settings


def find_run_config(checkpoint: str | Path) -> dict[str, Any]:
    """The training settings of a checkpoint's run, if it sits in a run directory.

    ``RUN/<opt>/final.pt`` (or ``averaged.pt``): ``RUN/<opt>/config.json`` then
    ``RUN/config.json``; ``RUN/<opt>/checkpoints/epoch_XXXX.pt`` one level deeper. Returns
    ``{}`` when there is none; keys used: batch_size, momentum, nesterov, lr. The run's own
    ``RUN/config.json`` keeps its settings under ``"config"``; they count too, after the
    optimizer's.
    """
    path = Path(checkpoint).resolve()
    found: dict[str, Any] = {}
    for parent in list(path.parents)[:3]:
        cfg = parent / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                nested = data.get("config")
                for key, value in [*data.items(), *(nested.items() if isinstance(nested, dict) else [])]:
                    found.setdefault(key, value)
        if found.get("batch_size") is not None:
            break
    return found


def momentum_limit(lr: float, momentum: float, nesterov: bool = False) -> float:
    """Largest curvature at which momentum GD (``torch.optim.SGD`` semantics, no dampening) is
    linearly stable on a quadratic: ``(2 + 2 beta)/lr`` for heavy ball, ``(2 + 2 beta)/(lr (1 +
    2 beta))`` for Nesterov.

    With ``a = lr lambda``, heavy ball iterates ``w' = w - lr (beta v + lambda w)``, whose
    characteristic polynomial ``z^2 - (1 + beta - a) z + beta`` has a root at -1 when ``a = 2 +
    2 beta``. Nesterov steps along ``g + beta v'``: ``z^2 - (1 + beta)(1 - a) z + beta (1 - a)``,
    a root at -1 when ``1 + (1 + 2 beta)(1 - a) = 0``. tests/test_sharpness.py runs
    torch.optim.SGD on a 1-D quadratic at 0.99x and 1.01x of each.
    """
    return (2 + 2 * momentum) / (lr * (1 + 2 * momentum)) if nesterov else (2 + 2 * momentum) / lr


# =========================================================================== model objective


def _trainable(engine: Engine) -> list[str]:
    return [e.name for e in engine.layout.entries if e.role != "buffer"]


def _activation_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(total, 4 * x1.numel())


def hvp_batch_size(model: nn.Module, x: torch.Tensor, limit: int, device: torch.device) -> int:
    """Samples per HVP batch: ``limit`` (``--batch-size``), capped so that one batch's
    forward-over-reverse graph (~8x the activations of a forward) fits a memory budget
    (2 GiB on CPU; a quarter of the free memory on CUDA)."""
    per_sample = 8 * _activation_bytes(model, x[:1])
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free / 4
    else:
        budget = 2 * 2**30
    return int(max(1, min(limit, budget // per_sample, len(x))))


@dataclass
class _Point:
    objective: Objective
    w: torch.Tensor
    names: list[str]  # trainable entries in w order
    shapes: dict[str, tuple[int, ...]]


def _objective_at(engine: Engine, point: torch.Tensor, split: str, sopts: SharpnessOptions, batch: int,
                  model: nn.Module, hvp: str | None = None) -> _Point:
    state = engine.scored_state(point)
    names = _trainable(engine)
    params = {n: state[n].detach().float().contiguous() for n in names}
    constants = {k: v for k, v in state.items() if k not in params}
    data = engine.split_data(split)
    method = hvp or sopts.hvp
    if method == "retained-graph" and math.ceil(len(data.y) / batch) > distributed.world_size():
        raise UserError(f"--hvp retained-graph keeps the gradient graph of one batch, and the {len(data.y)} samples "
                        f"make {math.ceil(len(data.y) / batch)} batches of {batch}: use --hvp-batch {len(data.y)} "
                        "(if memory allows), a smaller --subset, or another --hvp")
    # Under torchrun: this rank's share of the batches, every sum all-reduced.
    reduce = distributed.all_reduce_tensor if distributed.is_distributed() else None
    obj, w, space = Objective.for_model(model, params, constants, data.x, data.y, batch_size=batch,
                                        hvp_method=method, reduce=reduce,
                                        shard=(distributed.rank(), distributed.world_size()),
                                        choice_cache=cache_root() / "hvp-choice.json")
    return _Point(obj, w, names, space.shapes)


# =========================================================================== pieces


def _sam(obj: Objective, w: torch.Tensor, loss0: float, g0: torch.Tensor, rho: float, steps: int) -> dict[str, Any]:
    """``max_{||e|| <= rho} L(w + e) - L(w)``.

    First order: ``e0 = rho g/||g||``. Ascent: ``e_{t+1} = P(e_t + rho g_t/||g_t||)`` with
    ``g_t = grad L(w + e_t)`` and ``P`` the projection onto the ball (normalized, projected
    gradient ascent); the reported maximum is the best value seen (a lower bound of the true
    maximum, and >= the first-order value).
    """
    gn = float(g0.double().norm())
    if not gn > 0 or not math.isfinite(gn):
        return {"first_order": 0.0 if gn == 0 else float("nan"), "ascent": 0.0 if gn == 0 else float("nan"),
                "curve": np.zeros(1)}
    e = rho * g0 / gn
    curve = []
    for _ in range(steps):
        value, g = obj.value_and_grad(w + e)
        curve.append(value - loss0)
        norm = float(g.double().norm())
        if not norm > 0 or not math.isfinite(norm):
            break
        e = e + rho * g / norm
        e = e * min(1.0, rho / float(e.double().norm()))
    curve.append(obj.value(w + e) - loss0)
    curve_arr = np.asarray(curve)
    finite = curve_arr[np.isfinite(curve_arr)]
    return {"first_order": float(curve_arr[0]), "ascent": float(finite.max()) if finite.size else float("nan"),
            "curve": curve_arr}


def _layer_groups(names: list[str], shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], torch.Tensor, list[int]]:
    """Modules (parameter-name prefixes) in order, the (d,) group id of each coordinate, sizes."""
    groups: list[str] = []
    ids = []
    sizes: dict[str, int] = {}
    for n in names:
        module = n.rpartition(".")[0] or n
        if module not in sizes:
            groups.append(module)
            sizes[module] = 0
        k = math.prod(shapes[n])
        sizes[module] += k
        ids.append(torch.full((k,), groups.index(module), dtype=torch.long))
    return groups, torch.cat(ids), [sizes[g] for g in groups]


def _by_layer(obj: Objective, w: torch.Tensor, names: list[str], shapes: dict[str, tuple[int, ...]],
              sopts: SharpnessOptions, gen: torch.Generator) -> dict[str, Any]:
    """Top eigenvalue of every module's diagonal block (Lanczos runs in lockstep, each
    confined to its block) and, with ``trace``, every block's trace (Hutchinson)."""
    groups, seg, sizes = _layer_groups(names, shapes)
    seg = seg.to(w.device)
    masks = torch.stack([(seg == g).to(w.dtype) for g in range(len(groups))])  # (L, d)
    starts = torch.randn(masks.shape, generator=gen, dtype=torch.float64).to(w) * masks
    n_groups = len(groups)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        # Each row lives in its run's block: find the block from the row's support, and keep
        # the product there (the block-diagonal part of H).
        weight = torch.zeros((len(v), n_groups), dtype=torch.float64, device=v.device)
        weight.index_add_(1, seg, v.double().abs())
        return obj.hvp(w, v) * masks[weight.argmax(1)]

    def stop(runs) -> bool:
        for t in runs:
            if t.last_beta == 0.0 or t.steps == 0:
                continue
            theta, s = t.ritz()
            if abs(t.last_beta * s[-1, -1]) > sopts.tol * max(abs(theta).max(), 1e-300):
                return False
        return True

    tris = lanczos_tridiagonals(matvec, starts, sopts.layer_steps, stop=stop)
    lam = np.array([float(t.ritz()[0].max()) if t.steps else float("nan") for t in tris])
    out: dict[str, Any] = {"names": groups, "numel": np.asarray(sizes), "lambda_max": lam}
    if sopts.trace:
        est = hutchinson(obj.operator(w), sopts.trace_probes, generator=gen, segments=seg.cpu(),
                         num_segments=len(groups))
        out["trace"], out["trace_stderr"] = est.blocks, est.blocks_stderr
        out["_global"] = est
    return out


def _trace(op, sopts: SharpnessOptions, gen: torch.Generator, hutch=None, krylov: Any = None) -> dict[str, Any]:
    """``krylov``: the eigenvalue stage's Lanczos result with its basis, Hutch++'s low-rank part
    for free (:func:`landscape.hessian.hutchpp`)."""
    out: dict[str, Any] = {}
    if sopts.trace_method in ("hutchpp", "both"):
        est = hutchpp(op, sopts.trace_probes, generator=gen, basis=getattr(krylov, "basis", None),
                      basis_trace=getattr(krylov, "basis_trace", None))
        out.update(trace=est.value, trace_stderr=est.stderr, method=est.method, matvecs=est.matvecs)
    if sopts.trace_method in ("hutchinson", "both") or hutch is not None:
        est = hutch if hutch is not None else hutchinson(op, sopts.trace_probes, generator=gen)
        key = "trace" if sopts.trace_method == "hutchinson" else "trace_hutchinson"
        out[key], out[key + "_stderr"] = est.value, est.stderr
        if sopts.trace_method == "hutchinson":
            out["method"], out["matvecs"] = "hutchinson", est.matvecs
    return out


# =========================================================================== the analysis


class _Counted:
    """An operator that tells ``on_products`` how many Hessian-vector products each call made."""

    def __init__(self, op: Any, on_products: Callable[[int], None]):
        self.op, self.on_products = op, on_products
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        out = self.op(v)
        self.on_products(v.shape[0] if v.dim() > 1 else 1)
        return out


def _generator(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stage)


def _from_main(read: Callable[[], Any]) -> Any:
    """``read()`` of rank 0, the file's only reader, on every rank (every rank calls this,
    in the same order; an error on rank 0 is raised everywhere)."""
    return distributed.on_main(read, share=lambda value: value)[1]


def _stored(writer: ResultWriter, name: str) -> Any:
    """A dataset already in the ``.partial`` being continued (None if absent)."""

    def read() -> Any:
        h5 = getattr(writer, "_h5", None)
        if h5 is None or name not in h5:
            return None
        return h5[name][()]

    return _from_main(read)


class _Follower(common._Follower):
    """What ranks other than 0 hold under torchrun: the grid, no file; rank 0 writes the
    numbers every rank computed, so writing here is a no-op."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass


def _open(out: str | Path, ckpts: list[Checkpoint], engine: Engine, opts: AnalysisOptions, sopts: SharpnessOptions,
          coords: dict[str, np.ndarray], dims: list[str], metrics: list[str], extra: dict[str, Any]) -> ResultWriter:
    attrs = result_attrs("sharpness", ckpts, engine, opts)
    attrs.update(sopts.identity())
    attrs.update({k: v for k, v in extra.items() if v is not None})

    def create(cls: type[ResultWriter] = ResultWriter) -> ResultWriter:
        return cls.create_or_resume(out, analysis="sharpness", attrs=attrs, coords=coords, dims=dims,
                                    splits=list(opts.splits), metrics=metrics, overwrite=opts.overwrite)

    if not distributed.is_distributed():
        return create()
    # Rank 0 alone opens the file (one writer); its finish() releases the others.
    writer, complete = distributed.on_main(lambda: create(common._MainWriter), share=lambda w: w.complete)
    if writer is not None:
        return writer
    follower = _Follower(Path(out), "sharpness", coords, dims, list(opts.splits), complete)
    follower.metrics = list(metrics)
    return follower  # type: ignore[return-value]


def _settings(ckpt: Checkpoint, sopts: SharpnessOptions, engine: Engine) -> dict[str, Any]:
    run = find_run_config(ckpt.path) if ckpt.path and Path(ckpt.path).is_file() else {}
    lr = sopts.lr if sopts.lr is not None else ckpt.lr
    if sopts.lr is None and lr is not None and not (math.isfinite(lr) and lr > 0):
        # Checked before any compute: 2/lr needs a positive lr (a cosine run ends at lr 0).
        common.log.info("%s records lr %s, which has no stability limit 2/lr; give --lr for one", ckpt.path, lr)
        lr = None
    batch = run.get("batch_size") if isinstance(run.get("batch_size"), int) else None
    momentum = float(run["momentum"]) if isinstance(run.get("momentum"), (int, float)) else None
    return {
        "lr": float(lr) if lr is not None else None,
        "lr_source": "--lr" if sopts.lr is not None else ("checkpoint" if lr is not None else None),
        "momentum": momentum,
        "nesterov": bool(run.get("nesterov")) if momentum else None,
        "train_batch_size": batch or sopts.batch_size_train,
        "train_batch_size_source": "run config" if batch else ("--batch-size-train" if sopts.batch_size_train
                                                               else None),
        "train_size": None,  # filled by the caller (full train split size)
    }


def sharpness(checkpoint: CheckpointLike | None, out: str | Path, sopts: SharpnessOptions | None = None,
              opts: AnalysisOptions | None = None, engine: Engine | None = None) -> Path:
    """Measure the sharpness of ``checkpoint`` (or, with ``sopts.along``, along a line) into ``out``."""
    sopts = sopts or SharpnessOptions()
    opts = opts or AnalysisOptions(splits=("train",))
    sopts.validate()
    distributed.init()  # under torchrun: every rank computes, rank 0 writes
    if not distributed.is_main():
        opts = replace(opts, progress=None)  # one progress bar: rank 0's
    if len(opts.splits) != 1:
        raise UserError(f"--split {','.join(opts.splits)}: sharpness measures the Hessian of one split's loss; "
                        "give --split train or --split test")
    if sopts.along:
        return _along(Path(sopts.along), out, sopts, opts, engine)
    if checkpoint is None:
        raise UserError("give a checkpoint (or --along line.h5)")
    return _single(checkpoint, out, sopts, opts, engine)


def _prepare(inputs: list[CheckpointLike], opts: AnalysisOptions, sopts: SharpnessOptions, engine: Engine | None):
    ckpts, engine = prepare(inputs, opts, engine)
    split = opts.splits[0]
    model = engine.new_model().eval()
    data = engine.split_data(split)
    batch = sopts.hvp_batch or hvp_batch_size(model, data.x, opts.batch_size, engine.device)
    if distributed.is_distributed():
        # The same batches on every rank: the memory cap may differ between GPUs.
        batch = int(distributed.all_reduce_tensor(torch.tensor([batch]), op="min"))
    return ckpts, engine, split, model, batch


def _single(path: CheckpointLike, out: str | Path, sopts: SharpnessOptions, opts: AnalysisOptions,
            engine: Engine | None) -> Path:
    (ckpt,), engine, split, model, batch = _prepare([path], opts, sopts, engine)
    st = _settings(ckpt, sopts, engine)
    full_train = _train_size(engine, ckpt, opts) if sopts.noise else 0
    writer = _open(out, [ckpt], engine, opts, sopts, {}, [], ["loss", "accuracy"],
                   {"lr": st["lr"], "momentum": st["momentum"], "nesterov": st["nesterov"],
                    "train_batch_size": st["train_batch_size"], "split": split})
    if writer.complete:
        return writer.finish()
    try:
        return _single_stages(writer, engine, ckpt, split, model, batch, st, full_train, sopts, opts)
    except BaseException:
        writer.close()  # the .partial keeps every finished stage; the same command resumes
        raise


def _single_stages(writer: ResultWriter, engine: Engine, ckpt: Checkpoint, split: str, model: nn.Module,
                   batch: int, st: dict[str, Any], full_train: int, sopts: SharpnessOptions,
                   opts: AnalysisOptions) -> Path:
    # Progress counts Hessian-vector products against each stage's budget (Lanczos steps,
    # probes, SLQ runs x steps, layers x steps, ascent steps); a stage that stops early
    # jumps to its budget, so the count reaches the total exactly at the end.
    k = min(sopts.top_k, max(1, engine.layout.dim))
    budgets = {"point": 1, "eigenvalues": sopts.lanczos_steps or max(40, 4 * k + 20)}
    if sopts.trace:
        budgets["trace"] = sopts.trace_probes
    if sopts.density:
        budgets["density"] = sopts.density_runs * sopts.density_steps
    if sopts.sam:
        budgets["sam"] = sopts.sam_steps + 1
    if sopts.noise:
        budgets["noise"] = (sopts.noise_samples or 64) + (sopts.stability_samples or 64)
    if sopts.by_layer:
        budgets["by_layer"] = sopts.layer_steps * 8
    names, total = list(budgets), sum(budgets.values())
    state = {"done": 0, "finished": 0}  # products counted; stages finished (in `names` order)

    def progress(stage: str | None = None, products: int = 0) -> None:
        finished = state["finished"]
        reached = sum(budgets[n] for n in names[:finished])
        if stage is not None:  # the stage is over: its whole budget counts
            state["finished"] = finished = names.index(stage) + 1
            state["done"] = max(state["done"], sum(budgets[n] for n in names[:finished]))
            if distributed.is_main():
                common._test_stop(finished)  # tests: a kill after `finished` stored stages
        elif finished < len(names):  # within the running stage, never past its budget
            state["done"] = min(state["done"] + products, reached + budgets[names[finished]] - 1)
        if opts.progress:
            opts.progress(state["done"], total)

    progress()
    point = vector(engine, ckpt)
    if len(writer.pending()):  # rank 0 only: another rank's stand-in has nothing pending
        writer.write(np.array([0]), engine.evaluate(point))
    progress("point")
    p = _objective_at(engine, point, split, sopts, batch, model)
    obj, w = p.objective, p.w
    op = _Counted(obj.operator(w), lambda n: progress(products=n))
    info = {"hvp_method": None, "hvp_batch": batch, "parameters": int(w.numel()), "samples": obj.n}
    loss0, g0 = obj.value_and_grad(w)
    if not (math.isfinite(float(loss0)) and bool(torch.isfinite(g0).all())):
        raise UserError(f"{ckpt.path}: the {split} loss or its gradient is not finite here (loss {float(loss0)}): "
                        "a diverged model has no Hessian spectrum to measure")
    writer.put("grad_norm", np.float64(g0.double().norm()))

    def eigen_lanczos():
        # Lanczos goes on until lambda_max's error bar is clear of every stability limit (or
        # its steps run out): the verdicts below are then decided, not guessed. Its Krylov
        # basis is kept for the trace (Hutch++'s low-rank part, already paid for).
        return lanczos(op, min(sopts.top_k, w.numel()), smallest=sopts.smallest, max_steps=sopts.lanczos_steps,
                       tol=sopts.tol, generator=_generator(opts.seed, 1), separate=tuple(_limits(st).values()),
                       return_basis=sopts.trace)

    eig = _stored(writer, "eigenvalues")
    krylov = None
    if eig is None:
        res = krylov = eigen_lanczos()
        if sopts.smallest:
            writer.put("eigenvalues_smallest", res.smallest)
            writer.put("eigenvalues_smallest_residuals", res.smallest_residuals)
        writer.put("eigenvalue_residuals", res.residuals)
        writer.put("eigenvalues", res.eigenvalues, {"method": "lanczos (full reorthogonalization)",
                                                    "steps": res.steps, "converged": bool(res.converged),
                                                    "tol": sopts.tol})
        eig = res.eigenvalues
    eig = np.asarray(eig, dtype=np.float64)
    residuals = _stored(writer, "eigenvalue_residuals")
    # lambda_max's error bar: its residual bound, at least what float rounding allows.
    lam_error = max(float(np.asarray(residuals)[0]) if residuals is not None else math.inf,
                    roundoff(w.dtype, float(np.abs(eig).max())))
    progress("eigenvalues")

    trace_value = _stored(writer, "trace")
    layer = None
    if sopts.by_layer and _stored(writer, "by_layer/lambda_max") is None:
        layer = _by_layer(obj, w, p.names, p.shapes, sopts, _generator(opts.seed, 6))
    if sopts.trace:
        if trace_value is None:
            if krylov is None and sopts.trace_method != "hutchinson":
                krylov = eigen_lanczos()  # resumed past the eigenvalues: the same run, the same basis
            t = _trace(op, sopts, _generator(opts.seed, 2), hutch=(layer or {}).get("_global"), krylov=krylov)
            for key in ("trace_hutchinson", "trace_hutchinson_stderr"):
                if key in t:
                    writer.put(key, np.float64(t[key]))
            writer.put("trace_stderr", np.float64(t["trace_stderr"]))
            writer.put("trace", np.float64(t["trace"]), {"method": t["method"], "matvecs": t["matvecs"]})
            trace_value = t["trace"]
        krylov = None  # the basis (steps x d) is not needed past here
        progress("trace")
    if sopts.density:
        if _stored(writer, "density/values") is None:
            dens = slq_density(op, sopts.density_runs, sopts.density_steps, points=sopts.density_points,
                               sigma_rel=sopts.density_sigma, generator=_generator(opts.seed, 3))
            writer.put("density/grid", dens.grid)
            writer.put("density/nodes", dens.nodes)
            writer.put("density/weights", dens.weights)
            writer.put("density/values", dens.values, {"sigma": dens.sigma, "runs": sopts.density_runs,
                                                       "steps": sopts.density_steps, "method": "SLQ"})
        progress("density")
    if sopts.sam:
        if _stored(writer, "sam/ascent") is None:
            s = _sam(obj, w, loss0, g0, sopts.rho, sopts.sam_steps)
            writer.put("sam/first_order", np.float64(s["first_order"]), {"rho": sopts.rho})
            writer.put("sam/curve", s["curve"])
            writer.put("sam/ascent", np.float64(s["ascent"]), {"rho": sopts.rho, "steps": sopts.sam_steps})
        progress("sam")
    if sopts.noise:
        if _stored(writer, "noise/trace_h_sigma") is None:
            _noise(writer, obj, w, st, full_train, sopts, opts, eig, trace_value, prefix="")
        progress("noise")
    if sopts.by_layer:
        if layer is not None:
            writer.put("by_layer/names", np.array(layer["names"], dtype=object))
            writer.put("by_layer/numel", layer["numel"])
            if "trace" in layer:
                writer.put("by_layer/trace", layer["trace"])
                writer.put("by_layer/trace_stderr", layer["trace_stderr"])
            writer.put("by_layer/lambda_max", layer["lambda_max"], {"steps": sopts.layer_steps})
        progress("by_layer")
    _stability(writer, eig, lam_error, st, _stored(writer, "eigenvalues_smallest"))
    info["hvp_method"] = obj.method
    info["hvp_choice"] = obj.choice_source  # "measured", "cache" (auto) or None (asked for)
    info["hvp_timings_s"] = obj.timings
    writer.put("info", json.dumps(info))
    return writer.finish()


def _train_size(engine: Engine, ckpt: Checkpoint, opts: AnalysisOptions) -> int:
    """N of the SGD run: the full training split (not the --subset)."""
    return engine.full_sizes["train"]


def _limits(st: dict[str, Any]) -> dict[str, float]:
    """The curvature limits lambda_max is compared with: ``gd_limit`` 2/lr, and with momentum
    ``heavy_ball_limit`` or ``nesterov_limit`` (whichever the run used); {} without an lr."""
    lr = st["lr"]
    if lr is None:
        return {}
    limits = {"gd_limit": 2.0 / lr}
    if st.get("momentum"):
        name = "nesterov_limit" if st.get("nesterov") else "heavy_ball_limit"
        limits[name] = momentum_limit(lr, st["momentum"], bool(st.get("nesterov")))
    return limits


def _verdict(value: float, error: float, limit: float, *, what: str = "lambda_max") -> str:
    """"stable" (value <= limit) or "unstable", only when ``value +- error`` is on one side."""
    where = side(value, error, limit)
    if where is None:
        return f"undetermined ({what} = {value:.6g} +- {error:.2g} holds the limit {limit:.6g})"
    return "unstable" if where > 0 else "stable"


def _stability(writer: ResultWriter, eig: np.ndarray, error: float, st: dict[str, Any], smallest: Any = None) -> None:
    lr = st["lr"]
    if lr is None or not eig.size:
        return
    lam = float(eig[0])
    limits = _limits(st)
    limit = limits["gd_limit"]
    verdict = _verdict(lam, error, limit)
    extra = {}
    if smallest is not None and np.size(smallest) and float(np.min(smallest)) < 0:
        extra["negative_curvature"] = float(np.min(smallest))
        verdict += " (but lambda_min < 0: a saddle, not a minimum)"
    writer.put("stability/gd_limit", np.float64(limit),
               {"verdict": verdict, "lambda_max": lam, "lambda_max_error": error, "ratio": lam / limit, **extra,
                "condition": "GD is linearly stable at a minimum iff lambda_max(H) <= 2/lr"})
    beta = st.get("momentum")
    if "heavy_ball_limit" in limits:
        writer.put("stability/heavy_ball_limit", np.float64(limits["heavy_ball_limit"]),
                   {"verdict": _verdict(lam, error, limits["heavy_ball_limit"]), "momentum": beta, "nesterov": False,
                    "lambda_max_error": error,
                    "condition": "heavy-ball GD with momentum beta: lambda_max(H) <= (2 + 2 beta)/lr"})
    if "nesterov_limit" in limits:
        writer.put("stability/nesterov_limit", np.float64(limits["nesterov_limit"]),
                   {"verdict": _verdict(lam, error, limits["nesterov_limit"]), "momentum": beta, "nesterov": True,
                    "lambda_max_error": error,
                    "condition": "Nesterov GD with momentum beta (torch.optim.SGD): lambda_max(H) <= "
                                 "(2 + 2 beta)/(lr (1 + 2 beta))"})


def _noise(writer: ResultWriter, obj: Objective, w: torch.Tensor, st: dict[str, Any], train_size: int,
           sopts: SharpnessOptions, opts: AnalysisOptions, eig: np.ndarray, trace_value: Any, prefix: str) -> dict:
    chunk = int(max(1, min(64, (256 << 20) // (4 * w.numel()))))
    noise = gradient_noise(obj, w, chunk=chunk)
    ths = trace_h_sigma(obj, w, noise, samples=sopts.noise_samples, generator=_generator(opts.seed, 4),
                        chunk=chunk)
    out: dict[str, Any] = {"trace_sigma": noise.trace_sigma, "trace_h_sigma": ths.value,
                           "trace_h_sigma_stderr": ths.stderr}
    norm = "Sigma = (1/n) sum_i (g_i - gbar)(g_i - gbar)^T over the n samples of the split/subset"
    writer.put("noise/trace_sigma", np.float64(noise.trace_sigma), {"normalization": norm})
    writer.put("noise/trace_h_sigma_stderr", np.float64(ths.stderr))
    writer.put("noise/trace_h_sigma", np.float64(ths.value),
               {"estimator": "(1/m) sum_{i in S} c_i^T H c_i, c_i = g_i - gbar, m uniform samples without "
                             "replacement (exact when m = n)", "samples": ths.samples_used, "n": ths.n})
    if trace_value is not None and noise.trace_sigma > 0:
        tv = float(trace_value)
        if tv != 0:
            out["alignment"] = ths.value / (tv * noise.trace_sigma / w.numel())
            writer.put("noise/alignment", np.float64(out["alignment"]))
    lr, batch = st["lr"], st["train_batch_size"]
    if lr is not None and batch is not None and train_size > 1:
        factor = (train_size - batch) / (batch * (train_size - 1)) if train_size > batch else 0.0
        out["smoothing"] = lr**2 / 2 * factor * ths.value
        writer.put("noise/smoothing", np.float64(out["smoothing"]),
                   {"formula": "(lr^2/2) tr(H Sigma_B), Sigma_B = (N-B)/(B(N-1)) Sigma (mini-batch of B "
                               "drawn without replacement from N)", "N": train_size, "B": batch, "lr": lr})
        sgd = sgd_stability(obj, w, lr, batch, train_size, samples=sopts.stability_samples,
                            generator=_generator(opts.seed, 5), chunk=max(1, chunk // 4))
        out.update(sgd_lambda_max=sgd.lambda_max_a, nonuniformity=sgd.nonuniformity)
        writer.put("stability/nonuniformity", np.float64(sgd.nonuniformity))
        writer.put("stability/nonuniformity_limit", np.float64(sgd.nonuniformity_limit))
        verdict = _verdict(sgd.lambda_max_a, sgd.error, 1.0, what="lambda_max(A)")
        if sgd.stable is False and sgd.curvature < 0:
            verdict = "unstable (negative curvature: the point is not a minimum)"
        out["sgd_verdict"] = verdict
        writer.put("stability/sgd_lambda_max", np.float64(sgd.lambda_max_a), {
            "verdict": verdict, "error": sgd.error, "curvature_along_top_vector": sgd.curvature,
            "condition": "lambda_max((I - lr H)^2 + lr^2 (N-B)/(B(N-1)) Sigma_H) <= 1, Sigma_H = (1/n) sum_i H_i^2 "
                         "- H^2 (Wu, Ma & E, NeurIPS 2018, Theorem 1)",
            "N": train_size, "B": batch, "lr": lr, "samples": sgd.samples_used})
    return out


# =========================================================================== along a line


ALONG_METRICS_BASE = ["loss", "accuracy", "grad_norm", "lambda_max"]


def _along(line: Path, out: str | Path, sopts: SharpnessOptions, opts: AnalysisOptions,
           engine: Engine | None) -> Path:
    src = load_result(line)
    if src.attrs.get("analysis") != "interpolate" or "alpha" not in src.coords:
        raise UserError(f"{line}: --along takes an interpolate result (it holds a "
                        f"{src.attrs.get('analysis')!r} result)")
    paths = [Path(p) for p in src.attrs.get("checkpoints", [])]
    if len(paths) != 2:
        raise UserError(f"{line}: expected two checkpoints in its 'checkpoints' attribute")
    resolved = []
    for p in paths:
        if not p.exists() and (line.parent / p).exists():
            p = line.parent / p
        if not p.exists():
            raise UserError(f"{line} was made from {p}, which does not exist here")
        resolved.append(p)
    for p, sha in zip(resolved, src.attrs.get("checkpoint_sha256", [])):
        if file_sha256(p) != sha:
            raise UserError(f"{p} changed since {line} was computed (its sha256 differs)")
    ckpts, engine, split, model, batch = _prepare(resolved, opts, sopts, engine)
    st = _settings(ckpts[0], sopts, engine)
    full_train = _train_size(engine, ckpts[0], opts) if sopts.noise else 0
    alphas = np.asarray(src.coords["alpha"], dtype=np.float64)
    metrics = list(ALONG_METRICS_BASE)
    if sopts.smallest:
        metrics.append("lambda_min")
    if sopts.trace:
        metrics += ["trace", "trace_stderr"]
    if sopts.sam:
        metrics += ["sam_first_order", "sam_ascent"]
    if sopts.noise:
        metrics += ["trace_sigma", "trace_h_sigma", "trace_h_sigma_stderr"]
        if st["lr"] is not None and st["train_batch_size"] is not None:
            metrics.append("sgd_lambda_max")
    writer = _open(out, ckpts, engine, opts, sopts, {"alpha": alphas}, ["alpha"], metrics,
                   {"lr": st["lr"], "momentum": st["momentum"], "nesterov": st["nesterov"],
                    "train_batch_size": st["train_batch_size"], "split": split, "along": str(line)})
    if writer.complete:
        return writer.finish()
    try:
        return _along_points(writer, engine, ckpts, split, model, batch, st, full_train, alphas, metrics,
                             sopts, opts)
    except BaseException:
        writer.close()
        raise


def _along_points(writer: ResultWriter, engine: Engine, ckpts: list[Checkpoint], split: str, model: nn.Module,
                  batch: int, st: dict[str, Any], full_train: int, alphas: np.ndarray, metrics: list[str],
                  sopts: SharpnessOptions, opts: AnalysisOptions) -> Path:
    k = min(sopts.top_k, engine.layout.dim)
    eigs = _stored(writer, "eigenvalues")
    eigs = np.full((len(alphas), k), np.nan) if eigs is None else np.array(eigs, dtype=np.float64)
    va, vb = vector(engine, ckpts[0]), vector(engine, ckpts[1])
    pending = _from_main(writer.pending)  # every rank computes every pending point together
    measured: str | None = None
    total = len(alphas)
    if opts.progress:
        opts.progress(total - len(pending), total)
    for n_done, idx in enumerate(pending, start=1):
        a = float(alphas[idx])
        point = va if a == 0 else vb if a == 1 else (1 - a) * va + a * vb  # exact endpoints (0 * NaN is NaN)
        row: dict[str, float] = {}
        if distributed.is_main():  # the one that writes
            ev = engine.evaluate(point)
            row.update(loss=float(ev[split]["loss"][0]), accuracy=float(ev[split]["accuracy"][0]))
        p = _objective_at(engine, point, split, sopts, batch, model, measured)
        obj, w = p.objective, p.w
        op = obj.operator(w)
        loss0, g0 = obj.value_and_grad(w)
        row["grad_norm"] = float(g0.double().norm())
        if not (math.isfinite(float(loss0)) and bool(torch.isfinite(g0).all())):
            # A diverged point: every quantity is NaN, stored as such (never a crash).
            eigs[idx] = np.nan
            writer.put("eigenvalues", eigs, {"dims": ["alpha", "rank"], "method": "lanczos (full reorthogonalization)"})
            writer.write(np.array([idx]), {split: {m: np.array([row.get(m, float("nan"))]) for m in metrics}})
            continue
        res = lanczos(op, k, smallest=sopts.smallest, max_steps=sopts.lanczos_steps, tol=sopts.tol,
                      generator=_generator(opts.seed, 1), return_basis=sopts.trace)
        eigs[idx] = res.eigenvalues
        row["lambda_max"] = float(res.eigenvalues[0])
        if sopts.smallest:
            row["lambda_min"] = float(res.smallest[0])
        trace_value = None
        if sopts.trace:
            t = _trace(op, sopts, _generator(opts.seed, 2), krylov=res)
            row["trace"], row["trace_stderr"] = t["trace"], t["trace_stderr"]
            trace_value = t["trace"]
        if sopts.sam:
            s = _sam(obj, w, loss0, g0, sopts.rho, sopts.sam_steps)
            row["sam_first_order"], row["sam_ascent"] = s["first_order"], s["ascent"]
        if sopts.noise:
            n = _NoiseSink()
            vals = _noise(n, obj, w, st, full_train, sopts, opts, res.eigenvalues, trace_value, prefix="")
            row.update({m: vals.get(m, float("nan")) for m in ("trace_sigma", "trace_h_sigma", "trace_h_sigma_stderr",
                                                               "sgd_lambda_max") if m in metrics})
        if obj.method != "auto":
            measured = obj.method  # measured once, kept for the other points
        writer.put("eigenvalues", eigs, {"dims": ["alpha", "rank"], "method": "lanczos (full reorthogonalization)"})
        writer.write(np.array([idx]), {split: {m: np.array([row.get(m, float("nan"))]) for m in metrics}})
        if opts.progress:
            opts.progress(total - len(pending) + n_done, total)
    if st["lr"] is not None:
        writer.put("stability/gd_limit", np.float64(2.0 / st["lr"]),
                   {"condition": "GD is linearly stable at a minimum iff lambda_max(H) <= 2/lr"})
    writer.put("info", json.dumps({"hvp_batch": batch, "parameters": int(engine.layout.dim)}))
    return writer.finish()


class _NoiseSink:
    """Stands in for a writer where per-point noise values go to metrics instead of datasets."""

    def put(self, *_args: Any, **_kwargs: Any) -> None:
        pass


# =========================================================================== summary


def summarize(path: str | Path) -> dict[str, Any]:
    """A JSON-able digest of a sharpness result (what the CLI prints)."""
    r = load_result(path)
    ex, xa = r.extra, r.extra_attrs

    def num(name: str) -> float | None:
        v = ex.get(name)
        if v is None:
            return None
        v = np.asarray(v, dtype=np.float64)
        return float(v) if v.ndim == 0 else None

    out: dict[str, Any] = {"file": str(path), "analysis": "sharpness", "split": r.attrs.get("split"),
                           "lr": r.attrs.get("lr"), "momentum": r.attrs.get("momentum"),
                           "nesterov": _plain(r.attrs.get("nesterov")),
                           "train_batch_size": r.attrs.get("train_batch_size")}
    if r.dims == ["alpha"]:
        split = r.attrs.get("split") or next(iter(r.metrics))
        out["alpha"] = np.asarray(r.coords["alpha"]).tolist()
        out["along"] = {m: np.asarray(v, dtype=np.float64).tolist() for m, v in r.metrics[split].items()}
        if "stability/gd_limit" in ex:
            out["gd_limit"] = num("stability/gd_limit")
        return _clean(out)
    split = r.attrs.get("split") or next(iter(r.metrics), None)
    if split in r.metrics:
        out["loss"] = float(np.asarray(r.metrics[split]["loss"]))
        out["accuracy"] = float(np.asarray(r.metrics[split]["accuracy"]))
    out["grad_norm"] = num("grad_norm")
    if "eigenvalues" in ex:
        out["eigenvalues"] = np.asarray(ex["eigenvalues"], dtype=np.float64).tolist()
        out["lanczos"] = {k: v for k, v in xa.get("eigenvalues", {}).items() if k in ("steps", "converged", "tol")}
    if "eigenvalues_smallest" in ex:
        out["eigenvalues_smallest"] = np.asarray(ex["eigenvalues_smallest"], dtype=np.float64).tolist()
    if "trace" in ex:
        out["trace"] = {"value": num("trace"), "stderr": num("trace_stderr"),
                        "method": xa.get("trace", {}).get("method")}
        if "trace_hutchinson" in ex:
            out["trace_hutchinson"] = {"value": num("trace_hutchinson"), "stderr": num("trace_hutchinson_stderr")}
    if "density/values" in ex:
        g, v = np.asarray(ex["density/grid"]), np.asarray(ex["density/values"])
        out["density"] = {"points": int(g.size), "range": [float(g.min()), float(g.max())],
                          "integral": float(np.trapezoid(v, g)), "sigma": xa.get("density/values", {}).get("sigma")}
    if "sam/ascent" in ex:
        out["sam"] = {"rho": xa.get("sam/ascent", {}).get("rho"), "first_order": num("sam/first_order"),
                      "ascent": num("sam/ascent")}
    if "noise/trace_h_sigma" in ex:
        out["noise"] = {k: num(f"noise/{k}") for k in ("trace_sigma", "trace_h_sigma", "trace_h_sigma_stderr",
                                                       "alignment", "smoothing") if f"noise/{k}" in ex}
        out["noise"]["samples"] = xa.get("noise/trace_h_sigma", {}).get("samples")
    stab: dict[str, Any] = {}
    for name in ("gd_limit", "heavy_ball_limit", "nesterov_limit", "sgd_lambda_max"):
        if f"stability/{name}" in ex:
            a = xa.get(f"stability/{name}", {})
            stab[name] = {"value": num(f"stability/{name}"), "verdict": a.get("verdict")}
            error = a.get("error", a.get("lambda_max_error"))
            if error is not None:  # of lambda_max (of A for sgd_lambda_max)
                stab[name]["error"] = float(error)
    for name in ("nonuniformity", "nonuniformity_limit"):
        if f"stability/{name}" in ex:
            stab[name] = num(f"stability/{name}")
    if stab:
        out["stability"] = stab
    if "by_layer/lambda_max" in ex:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(ex["by_layer/names"]).tolist()]
        out["by_layer"] = [{"module": n, "numel": int(k), "lambda_max": float(l),
                            **({"trace": float(t)} if "by_layer/trace" in ex else {})}
                           for n, k, l, t in zip(names, ex["by_layer/numel"], ex["by_layer/lambda_max"],
                                                 ex.get("by_layer/trace", np.full(len(names), np.nan)))]
    if "info" in ex:
        info = ex["info"]
        out["info"] = json.loads(info.decode() if isinstance(info, bytes) else str(info))
    return _clean(out)


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON: numpy scalars to Python."""
    return value.item() if isinstance(value, np.generic) else value


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the summary is valid JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

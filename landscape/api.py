"""The analyses from Python, on your own model and data (notebooks, your training script).

Every function takes the model as an ``nn.Module`` (its architecture; its own weights are
the default point), the weights to measure as state_dicts, modules, checkpoint paths or
:class:`~landscape.checkpoint.Checkpoint` objects (foreign formats and key prefixes are
handled as on the command line), and the data as ``(train, test)``, each ``(x, y)`` tensors,
a ``Dataset`` of ``(x, y)`` items or a ``DataLoader`` (or a loaded
:class:`landscape.data.Dataset`). Data are taken as they are: your transforms, your
normalisation. The train split is what BatchNorm statistics are recomputed from; scores are
per-sample means over each split (or the fixed ``subset``).

Each returns a :class:`landscape.store.Result` in the HDF5 schema of the command-line
tools; ``out=`` also writes it to a file that ``landscape plot`` reads. Draw it with
``landscape.plots.figure(result)``::

    import landscape.api as ls
    line = ls.interpolate(model, sgd_state, swa_state, data=(train_loader, test_loader))
    landscape.plots.figure(line).show()

Common keywords (as on the command line): ``splits=("train", "test")``, ``subset=None``,
``bn="recompute"``, ``batch_size=2048``, ``seed=0``, ``device="auto"``, ``bf16=False``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.analyses import common
from landscape.analyses import interpolate as _interpolate
from landscape.analyses import rays as _rays
from landscape.analyses import surface as _surface
from landscape.analyses import trajectory as _trajectory
from landscape.analyses.common import AnalysisOptions
from landscape.analyses.sharpness import SharpnessOptions
from landscape.analyses.sharpness import sharpness as _sharpness
from landscape.checkpoint import Checkpoint
from landscape.data import Dataset, as_dataset
from landscape.device import resolve_device
from landscape.errors import UserError
from landscape.store import Result, load_result

__all__ = ["interpolate", "rays", "surface", "sharpness", "trajectory", "checkpoint"]

Weights = Mapping[str, torch.Tensor] | nn.Module | str | Path | Checkpoint
DataLike = Dataset | Sequence[Any] | Mapping[str, Any]


def checkpoint(weights: Weights, name: str = "weights") -> Checkpoint | str | Path:
    """A state_dict or module as a :class:`Checkpoint` named ``name`` (paths are left to be read safely)."""
    if isinstance(weights, (str, Path, Checkpoint)):
        return weights
    if isinstance(weights, nn.Module):
        weights = weights.state_dict()
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{name}: expected a state_dict, an nn.Module, a checkpoint path or a Checkpoint, "
                        f"got {type(weights).__name__}")
    state = {k: v.detach().to("cpu") for k, v in weights.items()}
    return Checkpoint(state_dict=state, model=None, data=None, path=f"<{name}>")


def interpolate(model: nn.Module, a: Weights, b: Weights, data: DataLike, *,
                alphas: Sequence[float] | np.ndarray = np.linspace(-0.5, 1.5, 41), out: str | Path | None = None,
                **options: Any) -> Result:
    """Loss and accuracy along (1 - alpha) A + alpha B."""
    return _run(lambda path, opts, engine: _interpolate(
        checkpoint(a, "A"), checkpoint(b, "B"), path, np.asarray(alphas, dtype=np.float64), opts, engine),
        model, data, out, options)


def rays(model: nn.Module, checkpoints: Sequence[Weights], data: DataLike, *,
         distances: Sequence[float] | np.ndarray = np.linspace(0, 1, 21), n_rays: int = 10, norm: str = "filter",
         ignore: str = "biasbn", out: str | Path | None = None, **options: Any) -> Result:
    """Loss along the same random rays from each checkpoint (filter-normalized by default)."""
    ckpts = [checkpoint(w, f"checkpoint {i}") for i, w in enumerate(checkpoints)]
    return _run(lambda path, opts, engine: _rays(
        ckpts, path, np.asarray(distances, dtype=np.float64), n_rays, norm, ignore, opts, engine),
        model, data, out, options)


def surface(model: nn.Module, origin: Weights | None, data: DataLike, *, x: Sequence[float] | None = None,
            y: Sequence[float] | None = None, through: tuple[Weights, Weights] | None = None, grid: int = 21,
            norm: str = "filter", ignore: str = "biasbn", out: str | Path | None = None, **options: Any) -> Result:
    """Loss on a plane around ``origin`` (default: the model's own weights): random directions, or the
    plane through ``origin`` and the two models of ``through``."""
    origin_ckpt = checkpoint(model if origin is None else origin, "origin")
    pair = (checkpoint(through[0], "A"), checkpoint(through[1], "B")) if through is not None else None
    xs = None if x is None else np.asarray(x, dtype=np.float64)
    ys = None if y is None else np.asarray(y, dtype=np.float64)
    return _run(lambda path, opts, engine: _surface(origin_ckpt, path, xs, ys, pair, norm, ignore, grid, opts,
                                                    engine), model, data, out, options)


def trajectory(model: nn.Module, checkpoints: Sequence[Weights], data: DataLike, *, layer: str | None = None,
               with_surface: bool = False, grid: int = 21, center: str = "mean", out: str | Path | None = None,
               **options: Any) -> Result:
    """PCA and time-delay coordinates of a sequence of weights (in the order given)."""
    ckpts = [checkpoint(w, f"checkpoint {i}") for i, w in enumerate(checkpoints)]
    return _run(lambda path, opts, engine: _trajectory(ckpts, path, layer, with_surface, grid, center, opts,
                                                       engine), model, data, out, options)


def sharpness(model: nn.Module, weights: Weights | None, data: DataLike, *, out: str | Path | None = None,
              splits: Sequence[str] = ("train",), **options: Any) -> Result:
    """Hessian top eigenvalues, trace, density, SAM sharpness... of the loss of one split at ``weights``
    (default: the model's own). Keywords of :class:`SharpnessOptions` (``top_k``, ``trace``,
    ``density``, ``noise``, ``lr``...) go there, the rest to the common options."""
    fields = set(SharpnessOptions.__dataclass_fields__)
    sopts = SharpnessOptions(**{k: options.pop(k) for k in list(options) if k in fields})
    target = checkpoint(model if weights is None else weights, "weights")
    options["splits"] = tuple(splits)
    return _run(lambda path, opts, engine: _sharpness(target, path, sopts, opts, engine), model, data, out, options)


def _run(analysis: Any, model: nn.Module, data: DataLike, out: str | Path | None, options: dict[str, Any]) -> Result:
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    unknown = set(options) - set(AnalysisOptions.__dataclass_fields__) - {"device"}
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))}; see landscape.analyses.AnalysisOptions")
    opts = AnalysisOptions(**{"command": "landscape.api", **options})
    dataset = _dataset(data, resolve_device(opts.device))
    engine = common.engine_for(model, dataset, opts)
    if out is not None:
        return load_result(analysis(Path(out), opts, engine))
    with tempfile.TemporaryDirectory(prefix="landscape-") as tmp:
        result = load_result(analysis(Path(tmp) / "result.h5", opts, engine))
    result.path = Path(f"<{result.analysis} result>")  # in memory only; out= writes a file
    return result


def _dataset(data: DataLike, device: torch.device) -> Dataset:
    if isinstance(data, Dataset):
        return data.to(device)
    if isinstance(data, Mapping):
        if set(data) != {"train", "test"}:
            raise UserError(f"data as a dict needs the keys 'train' and 'test', got {sorted(data)}")
        return as_dataset(data["train"], data["test"], device=device)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return as_dataset(data[0], data[1], device=device)
    raise UserError("data must be (train, test) -- each (x, y) tensors, a Dataset or a DataLoader -- a dict "
                    "with 'train' and 'test', or a landscape.data.Dataset")

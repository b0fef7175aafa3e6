"""The optimization trajectory: PCA of per-epoch weights and time-delay coordinates.

Phase-wise paper Fig. 1 (PCA of the last linear layer, time-delay plot) and Li et al.
Fig. 9 (`--surface`: the loss on the PCA plane around the final point, path projected).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from typing import Sequence

from landscape.analyses.common import AnalysisOptions, CheckpointLike, checkpoint_series, chunk_size, compute, \
    open_result, phase_keys, prepare, vector
from landscape.directions import pca, time_delay
from landscape.engine import Engine
from landscape.errors import UserError

SURFACE_MARGIN = 0.2


CENTERS = ("mean", "last", "loss-landscape")


def last_linear(model: torch.nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (the classifier the phase-wise paper's Fig. 1 uses)."""
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise UserError("--layer last: the model has no nn.Linear layer; name a layer")
    return names[-1]


def layer_mask(engine, layer: str | None) -> torch.Tensor:
    """Trainable parameters, or just those of one layer (`fc` matches fc.weight and fc.bias;
    `last` is the last nn.Linear)."""
    entries = engine.layout.entries
    if layer == "last":
        layer = last_linear(engine.model)
    if layer is None:
        mask = ~engine.layout.mask("buffer")
    else:
        chosen = [e for e in entries if e.role != "buffer" and (e.name == layer or e.name.startswith(layer + "."))]
        if not chosen:
            names = sorted({e.name.rsplit(".", 1)[0] for e in entries if e.role != "buffer"})
            raise UserError(f"--layer {layer!r}: no such layer; layers are {', '.join(names)}")
        mask = torch.zeros(engine.layout.dim, dtype=torch.bool)
        for e in chosen:
            mask[e.offset : e.offset + e.numel] = True
    return mask


def trajectory(checkpoints: Sequence[CheckpointLike], out: str | Path, layer: str | None = None,
               with_surface: bool = False, grid_points: int = 21, center: str = "mean",
               opts: AnalysisOptions | None = None, engine: Engine | None = None, phase: int | None = None) -> Path:
    """PCA and time-delay coordinates of a run's checkpoints (RUN/<optimizer>, a folder, files or a glob).

    ``phase``: only LR phase ``phase`` (1-based), from the point it started at (the paper's
    Fig. 1 b-d is one PCA per phase of the last FC layer: ``layer="last"``). ``center``:
    ``mean`` (PCA of the mean-centered points), ``last`` (centered on the final point), or
    ``loss-landscape`` (as its setup_PCA_directions and project_trajectory: the components of
    the mean-centered differences to the final point, coordinates of each difference, so the
    final point is at the origin).
    """
    opts = opts or AnalysisOptions()
    if center not in CENTERS:
        raise UserError(f"--center {center!r}: expected {', '.join(CENTERS)}")
    series = checkpoint_series(checkpoints, opts)
    epochs = sorted(series.items)
    if phase is not None:
        keys, before = phase_keys(series, phase)
        epochs = ([before] if before is not None else []) + keys
    if len(epochs) < 3:
        raise UserError(f"a trajectory needs at least 3 checkpoints, found {len(epochs)}")
    ckpts, engine = prepare([series.items[e] for e in epochs], opts, engine)
    mask = layer_mask(engine, layer)  # before any file is written: a typo costs nothing
    layer_name = last_linear(engine.model) if layer == "last" else layer
    writer = open_result(out, "trajectory", ckpts, engine, opts, {"epoch": np.asarray(epochs)}, ["epoch"],
                         identity={"layer": layer_name or "all trainable parameters", "center": center,
                                   "surface": bool(with_surface), "epoch_units": series.units, "phase": phase})
    if writer.complete:
        return writer.finish()
    vectors = torch.stack([vector(engine, c) for c in ckpts])
    mask = mask.to(vectors.device)
    fit = pca(vectors[:, mask], center="last" if center == "last" else "mean", k=2)
    if center == "loss-landscape":  # the same components; coordinates relative to the final point
        fit.coords = fit.coords - fit.coords[-1]
    d1, d2 = time_delay(vectors[:, mask])
    writer.put("pca/coords", np.asarray(fit.coords), {"units": "parameter distance along the components"})
    writer.put("pca/explained_variance_ratio", np.asarray(fit.explained_variance_ratio))
    writer.put("pca/residual", np.asarray(fit.residual), {"units": "distance from the PCA plane"})
    writer.put("timedelay/d1", np.asarray(d1), {"units": "||theta_t - theta_(t-1)||"})
    writer.put("timedelay/d2", np.asarray(d2), {"units": "||theta_t - theta_(t-2)||"})
    writer.put("lr", np.array([c.lr if c.lr is not None else np.nan for c in ckpts], dtype=np.float64))
    compute(writer, engine, lambda idx: vectors[torch.as_tensor(idx)], opts)
    if with_surface:
        _pca_surface(writer, engine, vectors[-1], mask, fit, grid_points, opts)
    return writer.finish()


def _pca_surface(writer, engine, final: torch.Tensor, mask: torch.Tensor, fit, grid_points: int,
                 opts: AnalysisOptions) -> None:
    """Loss on the PCA plane through the final point, in the PCA coordinates of the path."""
    coords = np.asarray(fit.coords, dtype=np.float64)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = SURFACE_MARGIN * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid_points)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid_points)
    u = torch.zeros_like(final)
    v = torch.zeros_like(final)
    components = torch.as_tensor(np.asarray(fit.components), dtype=final.dtype, device=final.device)
    u[mask], v[mask] = components[0], components[1]
    fx, fy = coords[-1]
    gx, gy = np.meshgrid(xs - fx, ys - fy)
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=final.dtype, device=final.device)
    results = {split: {"loss": [], "accuracy": []} for split in opts.splits}
    step = chunk_size(engine, opts)
    for start in range(0, len(grid), step):
        chunk = grid[start : start + step]
        values = engine.evaluate(final + chunk[:, :1] * u + chunk[:, 1:] * v)
        for split in opts.splits:
            for metric in ("loss", "accuracy"):
                results[split][metric].append(values[split][metric])
        if opts.progress:
            opts.progress(min(start + step, len(grid)), len(grid))
    writer.put("surface/x", xs)
    writer.put("surface/y", ys)
    for split in opts.splits:
        for metric in ("loss", "accuracy"):
            writer.put(f"surface/{split}/{metric}", np.concatenate(results[split][metric]).reshape(len(ys), len(xs)),
                       {"dims": ["y", "x"]})

"""2-D loss surface: two random filter-normalized directions, or the plane through three models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, compute, open_result, prepare, \
    store_directions, vector
from landscape.directions import gram_schmidt_plane, surface_directions
from landscape.engine import Engine
from landscape.errors import UserError

MARGIN = 0.25  # grid margin around the three models of a --through plane, as a fraction of their spread


def surface(checkpoint: CheckpointLike, out: str | Path, xs: np.ndarray | None = None, ys: np.ndarray | None = None,
            through: tuple[CheckpointLike, CheckpointLike] | None = None, norm: str = "filter",
            ignore: str = "biasbn", grid_points: int = 21, opts: AnalysisOptions | None = None,
            engine: Engine | None = None) -> Path:
    """Loss on the grid ``origin + x u + y v``.

    Random plane: origin = CHECKPOINT, u and v two Gaussian directions normalized like
    ``rays`` (units: filter-normalized). ``through=(A, B)``: the plane through CHECKPOINT, A
    and B by Gram-Schmidt, u and v unit vectors, so x and y are parameter distances; the
    grid defaults to the three models plus a margin, and their coordinates are stored.
    """
    opts = opts or AnalysisOptions()
    paths = [checkpoint, *(through or ())]
    ckpts, engine = prepare(paths, opts, engine)
    base = vector(engine, ckpts[0])
    if through:
        params = ~engine.layout.mask("buffer").to(base.device)
        a, b = vector(engine, ckpts[1]), vector(engine, ckpts[2])
        plane = gram_schmidt_plane(base, a, b, mask=params)
        model_xy = np.asarray(plane.coords, dtype=np.float64)
        if xs is None or ys is None:
            lo, hi = model_xy.min(axis=0), model_xy.max(axis=0)
            pad = MARGIN * (hi - lo).max()
            xs = np.linspace(lo[0] - pad, hi[0] + pad, grid_points) if xs is None else xs
            ys = np.linspace(lo[1] - pad, hi[1] + pad, grid_points) if ys is None else ys
        u, v = plane.u, plane.v
        normalization = "gram-schmidt"
        units = "parameter distance (Euclidean, trainable parameters) from CHECKPOINT"
    else:
        u, v = surface_directions(engine.layout, base, opts.seed, norm=norm, ignore=ignore)
        xs = np.linspace(-1, 1, grid_points) if xs is None else xs
        ys = np.linspace(-1, 1, grid_points) if ys is None else ys
        normalization = norm
        units = {"filter": "filter-normalized direction units (Li et al. 2018)",
                 "layer": "layer-normalized direction units", "none": "Euclidean (unit-norm directions)"}.get(norm, norm)
        model_xy = None
    if len(xs) < 1 or len(ys) < 1:
        raise UserError("empty grid")
    writer = open_result(out, "surface", ckpts, engine, opts, {"x": np.asarray(xs), "y": np.asarray(ys)}, ["y", "x"],
                         normalization=normalization, identity={"ignore": ignore, "units": units})
    if not writer.complete:
        x32, y32 = np.asarray(xs, np.float32), np.asarray(ys, np.float32)

        def points(idx: np.ndarray) -> torch.Tensor:
            iy, ix = np.unravel_index(idx, writer.shape)
            cx = base.new_tensor(x32[ix])[:, None]
            cy = base.new_tensor(y32[iy])[:, None]
            return base + cx * u + cy * v

        rule = ("gram_schmidt_plane(CHECKPOINT, A, B) over trainable parameters" if through else
                "landscape.directions.surface_directions(layout, base, seed, norm=..., ignore=...)")
        store_directions(writer, {"directions/u": u, "directions/v": v}, rule)
        compute(writer, engine, points, opts)
        if model_xy is not None:
            writer.put("models/coords", model_xy, {"units": units})
            writer.put("models/names", np.array([str(c.path) for c in ckpts], dtype=object))
    return writer.finish()

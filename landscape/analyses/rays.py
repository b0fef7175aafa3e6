"""Loss along random rays from each checkpoint, the same rays for all (SWA Fig. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, compute, open_result, prepare, \
    store_directions, vector
from landscape.directions import ray_directions
from landscape.engine import Engine
from landscape.errors import UserError

UNITS = {
    "filter": "filter-normalized: distance 1 moves every filter by its own norm (Li et al. 2018)",
    "layer": "layer-normalized: distance 1 moves every layer by its own norm",
    "none": "Euclidean distance in parameter space (unit-norm directions)",
}


def rays(checkpoints: Sequence[CheckpointLike], out: str | Path, distances: np.ndarray, n_rays: int = 10,
         norm: str = "filter", ignore: str = "biasbn", opts: AnalysisOptions | None = None,
         engine: Engine | None = None) -> Path:
    """Loss at ``base_c + t d_{c,r}`` for every checkpoint c, ray r and distance t.

    Ray r is one Gaussian draw shared by all checkpoints; its normalization is relative to
    each checkpoint's own weights (filter/layer) or a unit vector (none). The directions are
    stored as ``directions/rays`` (checkpoint, ray, dim) when they fit the storage limit,
    else the rule that regenerates them exactly (:func:`landscape.directions.ray_directions`).
    """
    opts = opts or AnalysisOptions()
    if n_rays < 1:
        raise UserError(f"--rays must be >= 1, got {n_rays}")
    ckpts, engine = prepare(checkpoints, opts, engine)
    coords = {"checkpoint": np.arange(len(ckpts)), "ray": np.arange(n_rays), "distance": distances}
    writer = open_result(out, "rays", ckpts, engine, opts, coords, ["checkpoint", "ray", "distance"],
                         normalization=norm, identity={"ignore": ignore, "units": UNITS[norm] if norm in UNITS else norm})
    if not writer.complete:
        bases = [vector(engine, c) for c in ckpts]
        directions = ray_directions(engine.layout, bases, n_rays, opts.seed, norm=norm, ignore=ignore)
        store_directions(writer, {"directions/rays": torch.stack([torch.stack(d) for d in directions])},
                         "landscape.directions.ray_directions(layout, bases, rays, seed, norm=..., ignore=...)")
        t = np.asarray(distances, dtype=np.float32)
        shape = writer.shape

        def points(idx: np.ndarray) -> torch.Tensor:
            c, r, k = np.unravel_index(idx, shape)
            return torch.stack([bases[ci] + float(t[ki]) * directions[ci][ri] for ci, ri, ki in zip(c, r, k)])

        compute(writer, engine, points, opts)
    return writer.finish()

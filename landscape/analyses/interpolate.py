"""1-D linear interpolation (1-a)A + aB between two solutions (SWA Fig. 5; Nitanda's sections)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, compute, open_result, parameter_norm, \
    prepare, vector
from landscape.engine import Engine


def line_points(va: torch.Tensor, vb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) A + t B for every t (a 1-D tensor), with the endpoints exact: t = 0 is A itself
    and t = 1 is B itself, even when the other model holds NaN/inf (0 * NaN is NaN)."""
    t = t.reshape(-1, 1)
    mixed = (1 - t) * va + t * vb
    return torch.where(t == 0, va, torch.where(t == 1, vb, mixed))


def interpolate(a: CheckpointLike, b: CheckpointLike, out: str | Path, alphas: np.ndarray,
                opts: AnalysisOptions | None = None, engine: Engine | None = None) -> Path:
    """Loss and accuracy along the line through A (alpha = 0) and B (alpha = 1)."""
    opts = opts or AnalysisOptions()
    ckpts, engine = prepare([a, b], opts, engine)
    va, vb = vector(engine, ckpts[0]), vector(engine, ckpts[1])
    writer = open_result(out, "interpolate", ckpts, engine, opts, {"alpha": alphas}, ["alpha"])
    if not writer.complete:
        alpha = np.asarray(alphas, dtype=np.float32)

        def points(idx: np.ndarray):
            return line_points(va, vb, va.new_tensor(alpha[idx]))

        compute(writer, engine, points, opts)
        writer.put("distance", np.float64(parameter_norm(engine, vb - va)),
                   {"units": "Euclidean norm of B - A over trainable parameters"})
    return writer.finish()

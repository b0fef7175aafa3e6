"""1-D linear interpolation (1-a)A + aB between two solutions (SWA Fig. 5; Nitanda's sections)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.analyses.common import AnalysisOptions, CheckpointLike, compute, open_result, parameter_norm, \
    prepare, vector
from landscape.engine import Engine


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
            t = va.new_tensor(alpha[idx])[:, None]
            return (1 - t) * va + t * vb

        compute(writer, engine, points, opts)
        writer.put("distance", np.float64(parameter_norm(engine, vb - va)),
                   {"units": "Euclidean norm of B - A over trainable parameters"})
    return writer.finish()

"""Loss along the segments joining chosen epochs of one run (phase-wise paper, Fig. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, checkpoint_series, compute, open_result, \
    pick, prepare, vector
from landscape.analyses.interpolate import line_points
from landscape.engine import Engine
from landscape.errors import UserError


def default_anchors(epochs: Sequence[int], count: int = 5) -> list[int]:
    """Evenly spaced epochs from the first trained epoch to the last."""
    trained = sorted(e for e in epochs if e >= 1)
    if len(trained) < 2:
        raise UserError("segments needs at least two trained epochs (checkpoints after the first)")
    picks = np.linspace(0, len(trained) - 1, min(count, len(trained))).round().astype(int)
    return [trained[i] for i in sorted(set(picks))]


def segments(checkpoints: Sequence[CheckpointLike], out: str | Path, anchors: Sequence[int] | None = None,
             points: int = 21, opts: AnalysisOptions | None = None, engine: Engine | None = None) -> Path:
    """Loss at (1-a) theta_{e_i} + a theta_{e_{i+1}} for consecutive anchors e_i.

    ``checkpoints``: RUN/<optimizer>, a folder, files or a glob (see ``checkpoint_series``);
    anchors are epochs, or positions when the files do not store distinct epochs.
    """
    opts = opts or AnalysisOptions()
    if points < 2:
        raise UserError(f"--points must be >= 2, got {points}")
    series = checkpoint_series(checkpoints, opts)
    anchors = list(anchors) if anchors else default_anchors(list(series.items))
    if len(anchors) < 2:
        raise UserError("--epochs needs at least two epochs, e.g. 1,20,40")
    ckpts, engine = prepare(pick(series, anchors, "--epochs"), opts, engine)
    alphas = np.linspace(0.0, 1.0, points)
    coords = {"epoch": np.asarray(anchors), "segment": np.arange(len(anchors) - 1), "alpha": alphas}
    writer = open_result(out, "segments", ckpts, engine, opts, coords, ["segment", "alpha"],
                         identity={"epoch_units": series.units})
    if not writer.complete:
        vectors = [vector(engine, c) for c in ckpts]
        a32 = alphas.astype(np.float32)

        def at(idx: np.ndarray) -> torch.Tensor:
            seg, k = np.unravel_index(idx, writer.shape)
            return torch.cat([line_points(vectors[i], vectors[i + 1], vectors[i].new_tensor([a32[j]]))
                              for i, j in zip(seg, k)])

        compute(writer, engine, at, opts)
    return writer.finish()

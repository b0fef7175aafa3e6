"""Loss along the segments joining chosen epochs of one run (phase-wise paper, Fig. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, checkpoint_series, compute, open_result, \
    phase_keys, pick, prepare, vector
from landscape.analyses.interpolate import line_points
from landscape.engine import Engine
from landscape.errors import UserError


def default_anchors(epochs: Sequence[int], count: int = 5) -> list[int]:
    """The first epoch, then every (T/(count-1))-th: theta_1, theta_20, theta_40, theta_60, theta_80
    for T = 80 epochs (the phase-wise paper's Fig. 2), 1, 5, 10, 15, 20 for 20."""
    trained = sorted(epochs)
    if len(trained) < 2:
        raise UserError("segments needs at least two trained epochs (checkpoints after the first)")
    T = len(trained)
    picks = [0] + [round(T * i / (count - 1)) - 1 for i in range(1, count)]
    return [trained[i] for i in sorted(set(max(0, p) for p in picks))]


def segments(checkpoints: Sequence[CheckpointLike], out: str | Path, anchors: Sequence[int] | None = None,
             points: int = 21, opts: AnalysisOptions | None = None, engine: Engine | None = None,
             phase: int | None = None) -> Path:
    """Loss at (1-a) theta_{e_i} + a theta_{e_{i+1}} for consecutive anchors e_i.

    ``checkpoints``: RUN/<optimizer>, a folder, files or a glob (see ``checkpoint_series``);
    anchors are epochs, or positions when the files do not store distinct epochs. Default
    anchors: :func:`default_anchors` over the whole run, or over LR phase ``phase`` (the
    paper's Fig. 2 is ``phase=1``).
    """
    opts = opts or AnalysisOptions()
    if points < 2:
        raise UserError(f"--points must be >= 2, got {points}")
    if anchors and phase is not None:
        raise UserError("give --epochs or --phase, not both (--phase chooses the anchors within the phase)")
    series = checkpoint_series(checkpoints, opts)
    if not anchors:
        within = phase_keys(series, phase)[0] if phase is not None else \
            [k for k in series.items if k >= 1 or series.units != "epoch"]
        anchors = default_anchors(within)
    anchors = list(anchors)
    if len(anchors) < 2:
        raise UserError("--epochs needs at least two epochs, e.g. 1,20,40")
    ckpts, engine = prepare(pick(series, anchors, "--epochs"), opts, engine)
    alphas = np.linspace(0.0, 1.0, points)
    coords = {"epoch": np.asarray(anchors), "segment": np.arange(len(anchors) - 1), "alpha": alphas}
    writer = open_result(out, "segments", ckpts, engine, opts, coords, ["segment", "alpha"],
                         identity={"epoch_units": series.units, "phase": phase})
    if not writer.complete:
        vectors = [vector(engine, c) for c in ckpts]
        a32 = alphas.astype(np.float32)

        def at(idx: np.ndarray) -> torch.Tensor:
            seg, k = np.unravel_index(idx, writer.shape)
            return torch.cat([line_points(vectors[i], vectors[i + 1], vectors[i].new_tensor([a32[j]]))
                              for i, j in zip(seg, k)])

        compute(writer, engine, at, opts)
    return writer.finish()

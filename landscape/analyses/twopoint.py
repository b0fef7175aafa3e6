"""Two-point averages (theta_ref + theta_{ref-k}) / 2 over intervals k (phase-wise paper, Fig. 3).

Intervals are counted in mini-batch steps. Step granularity uses the run's
``step_XXXXXXX.pt`` checkpoints (``train --save-every-steps K``) inside the last epoch
before the reference; epoch granularity uses ``epoch_XXXX.pt``. k = 0 is theta_ref itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, compute, load_checkpoints, make_engine, open_result, \
    run_checkpoints, vector
from landscape.errors import UserError


def steps_per_epoch(epochs: dict[int, Path]) -> int | None:
    """Read from the checkpoints themselves: the last epoch checkpoint's step count / its epoch."""
    known = sorted(e for e in epochs if e >= 1)
    if not known:
        return None
    last = torch.load(epochs[known[-1]], map_location="cpu", weights_only=True)
    return int(last["step"]) // known[-1] if last.get("step") else None


def twopoint(run_dir: str | Path, out: str | Path, ref: int | None = None, max_epochs: int | None = None,
             opts: AnalysisOptions | None = None) -> Path:
    opts = opts or AnalysisOptions()
    epochs, steps = run_checkpoints(run_dir)
    ref = ref if ref is not None else max(epochs)
    if ref not in epochs or ref < 1:
        raise UserError(f"--ref {ref}: no epoch_{ref:04d}.pt in {run_dir} (epochs {min(epochs)}..{max(epochs)})")
    per_epoch = steps_per_epoch(epochs)
    if per_epoch is None:
        raise UserError(f"{run_dir}: checkpoints do not record their step; cannot count intervals in steps")
    ref_step = ref * per_epoch
    # interval (in steps) -> (checkpoint, granularity); epoch checkpoints win ties.
    others: dict[int, tuple[Path, str]] = {}
    for step, path in steps.items():
        k = ref_step - step
        if 0 < k < per_epoch:
            others[k] = (path, "step")
    reach = ref if max_epochs is None else min(ref, max_epochs)
    for e in range(ref - reach, ref):
        if e in epochs:
            others[(ref - e) * per_epoch] = (epochs[e], "epoch")
    if not others:
        raise UserError(f"{run_dir}: no checkpoints before epoch {ref} to average with")
    intervals = np.array([0] + sorted(others), dtype=np.int64)
    paths = [epochs[ref]] + [others[k][0] for k in intervals[1:]]
    ckpts = load_checkpoints(paths)
    engine = make_engine(ckpts[0], opts)
    granularity = ["ref"] + [others[k][1] for k in intervals[1:]]
    writer = open_result(out, "twopoint", ckpts, opts, {"interval": intervals}, ["interval"],
                         identity={"ref_epoch": ref, "steps_per_epoch": per_epoch,
                                   "interval_units": "mini-batch steps"})
    if not writer.complete:
        reference = vector(engine, ckpts[0])

        def points(idx: np.ndarray) -> torch.Tensor:
            return torch.stack([reference if i == 0 else 0.5 * (reference + vector(engine, ckpts[i])) for i in idx])

        compute(writer, engine, points, opts)
        writer.put("interval_epochs", intervals / per_epoch, {"units": "epochs"})
        writer.put("granularity", np.array(granularity, dtype=object))
    return writer.finish()

"""Two-point averages (theta_ref + theta_{ref-k}) / 2 over intervals k (phase-wise paper, Fig. 3).

Intervals are counted in mini-batch steps. Step granularity uses the run's
``step_XXXXXXX.pt`` checkpoints (``train --save-every-steps K``) inside the last epoch
before the reference; epoch granularity uses ``epoch_XXXX.pt``. k = 0 is theta_ref itself.
A list of files counts in the steps they store, else in epochs or positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.analyses.common import AnalysisOptions, CheckpointLike, Series, checkpoint_series, compute, \
    open_result, phase_keys, prepare, vector
from landscape.checkpoint import Checkpoint, load_checkpoint
from landscape.engine import Engine
from landscape.errors import UserError


def steps_per_epoch(epochs: dict[int, Path]) -> int | None:
    """Read from the checkpoints themselves: the last epoch checkpoint's step count / its epoch."""
    known = sorted(e for e in epochs if e >= 1)
    if not known:
        return None
    last = load_checkpoint(epochs[known[-1]])
    return last.step // known[-1] if last.step else None


def twopoint(checkpoints: Sequence[CheckpointLike], out: str | Path, ref: int | None = None,
             max_epochs: int | None = None, opts: AnalysisOptions | None = None,
             engine: Engine | None = None, phase: int | None = None) -> Path:
    """Loss of (theta_ref + theta_{ref-k}) / 2 for every earlier checkpoint.

    RUN/<optimizer>: intervals in mini-batch steps, step checkpoints inside the last epoch
    before ``ref`` and epoch checkpoints before it. A list, folder or glob of files: every
    file before ``ref`` (default the last), intervals in stored steps when every file has
    one, else in the series' own units (epochs or positions). ``phase``: ``ref`` defaults
    to the end of that LR phase and the intervals reach back to its start (the paper's
    Fig. 3 is ``phase=1``: theta_80 with the points of the first phase).
    """
    opts = opts or AnalysisOptions()
    series = checkpoint_series(checkpoints, opts)
    if phase is not None:
        keys, before = phase_keys(series, phase)
        ref = keys[-1] if ref is None else ref
        if not keys[0] <= ref <= keys[-1]:
            raise UserError(f"--ref {ref} is outside LR phase {phase} ({keys[0]}..{keys[-1]})")
        start = before if before is not None else keys[0]
        max_epochs = ref - start if max_epochs is None else min(max_epochs, ref - start)
    if series.run_dir is not None:
        plan = _run_plan(series, ref, max_epochs)
    else:
        plan = _list_plan(series, ref, max_epochs, opts)
    paths, intervals, granularity, units, identity = plan
    ckpts, engine = prepare(paths, opts, engine)
    writer = open_result(out, "twopoint", ckpts, engine, opts, {"interval": intervals}, ["interval"],
                         identity={**identity, "interval_units": units, "phase": phase})
    if not writer.complete:
        reference = vector(engine, ckpts[0])

        def points(idx: np.ndarray) -> torch.Tensor:
            return torch.stack([reference if i == 0 else 0.5 * (reference + vector(engine, ckpts[i])) for i in idx])

        compute(writer, engine, points, opts)
        if "steps_per_epoch" in identity:
            writer.put("interval_epochs", intervals / identity["steps_per_epoch"], {"units": "epochs"})
        writer.put("granularity", np.array(granularity, dtype=object))
    return writer.finish()


Plan = tuple[list[CheckpointLike], np.ndarray, list[str], str, dict]


def _run_plan(series: Series, ref: int | None, max_epochs: int | None) -> Plan:
    epochs, steps, run_dir = series.items, series.steps, series.run_dir
    ref = ref if ref is not None else max(epochs)
    if ref not in epochs or ref < 1:
        raise UserError(f"--ref {ref}: no epoch_{ref:04d}.pt in {run_dir} (epochs {min(epochs)}..{max(epochs)})")
    per_epoch = steps_per_epoch(epochs)  # type: ignore[arg-type]
    if per_epoch is None:
        raise UserError(f"{run_dir}: checkpoints do not record their step; cannot count intervals in steps")
    ref_step = ref * per_epoch
    # interval (in steps) -> (checkpoint, granularity); epoch checkpoints win ties.
    others: dict[int, tuple[CheckpointLike, str]] = {}
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
    granularity = ["ref"] + [others[k][1] for k in intervals[1:]]
    return paths, intervals, granularity, "mini-batch steps", {"ref_epoch": ref, "steps_per_epoch": per_epoch}


def _list_plan(series: Series, ref: int | None, max_epochs: int | None, opts: AnalysisOptions) -> Plan:
    keys = sorted(series.items)
    ref = ref if ref is not None else keys[-1]
    if ref not in series.items:
        raise UserError(f"--ref {ref}: no checkpoint at {series.units} {ref} (these have {keys[0]}..{keys[-1]})")
    earlier = [k for k in keys if k < ref and (max_epochs is None or ref - k <= max_epochs)]
    if not earlier:
        raise UserError(f"no checkpoints before {series.units} {ref} to average with")
    chosen = [ref] + earlier[::-1]  # nearest first: intervals ascending
    items = [series.items[k] for k in chosen]
    loaded = [c for c in items if isinstance(c, Checkpoint)]
    stored_steps = [c.step for c in loaded] if len(loaded) == len(items) else []
    if stored_steps and None not in stored_steps and len(set(stored_steps)) == len(stored_steps):
        intervals = np.array([stored_steps[0] - s for s in stored_steps], dtype=np.int64)  # type: ignore[operator]
        order = np.argsort(intervals, kind="stable")
        return ([items[i] for i in order], intervals[order], ["ref"] + ["step"] * (len(items) - 1),
                "mini-batch steps (stored in the checkpoints)", {"ref": ref, "ref_units": series.units})
    intervals = np.array([ref - k for k in chosen], dtype=np.int64)
    return items, intervals, ["ref"] + ["checkpoint"] * (len(items) - 1), series.units, {"ref": ref}

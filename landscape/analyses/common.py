"""What every analysis shares: loading checkpoints, building the engine, filling a result file.

An analysis is three things: the checkpoints it reads, the coordinates of its points, and
a function from a chunk of point indices to a (chunk, dim) tensor of parameter vectors.
`compute` does the rest: it evaluates only the points the result file lacks, writes
each chunk as soon as it is done (so a killed run resumes), and finishes the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.checkpoint import Checkpoint, load_checkpoint
from landscape.data import load_dataset
from landscape.device import resolve_device
from landscape.engine import Engine
from landscape.errors import UserError
from landscape.store import ResultWriter, root_attrs

Progress = Callable[[int, int], None]  # (points done, points total)
SPLITS = ("train", "test")


@dataclass
class AnalysisOptions:
    """The options every analysis command takes (DESIGN.md "Common options")."""

    splits: Sequence[str] = SPLITS
    subset: int | None = None
    bn: str = "recompute"
    device: str = "auto"
    batch_size: int = 2048
    seed: int = 0
    data_dir: str | None = None
    strategy: str = "auto"
    bf16: bool = False
    command: str = ""
    overwrite: bool = False
    chunk: int | None = None  # points per engine call; None = about 256 MB of point vectors
    progress: Progress | None = field(default=None, repr=False)

    def validate(self) -> None:
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise UserError(f"--split {','.join(self.splits)}: choose from train, test (comma-separated)")
        if self.bn not in ("recompute", "keep"):
            raise UserError(f"--bn {self.bn!r}: expected recompute or keep")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"--subset must be >= 1, got {self.subset}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")


def parse_range(text: str, flag: str, default_points: int | None = None) -> np.ndarray:
    """`lo:hi:n` (or `lo:hi` with a default n) -> n evenly spaced values, both ends included."""
    parts = text.split(":")
    try:
        if len(parts) == 3:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        elif len(parts) == 2 and default_points is not None:
            lo, hi, n = float(parts[0]), float(parts[1]), default_points
        else:
            raise ValueError
    except ValueError:
        form = "LO:HI:N" if default_points is None else "LO:HI or LO:HI:N"
        raise UserError(f"{flag} {text!r}: expected {form}, e.g. -1:1:21") from None
    if n < 1 or not np.isfinite([lo, hi]).all() or (n > 1 and lo >= hi):
        raise UserError(f"{flag} {text!r}: empty range (need LO < HI and N >= 1)")
    return np.linspace(lo, hi, n)


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,20,40") from None
    if not values:
        raise UserError(f"{flag}: no values given")
    return values


def load_checkpoints(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """Load checkpoints and insist they are the same architecture on the same data."""
    if not paths:
        raise UserError("no checkpoint given")
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]
    for other in ckpts[1:]:
        if other.model != first.model:
            raise UserError(
                f"checkpoints of different architectures: {first.path} is {_describe(first)}, "
                f"{other.path} is {_describe(other)}"
            )
        if set(other.state_dict) != set(first.state_dict) or any(
            other.state_dict[k].shape != first.state_dict[k].shape for k in first.state_dict
        ):
            raise UserError(f"checkpoints do not match: {first.path} and {other.path} hold different tensors")
    return ckpts


def _describe(ckpt: Checkpoint) -> str:
    return f"{ckpt.model['name']}({', '.join(f'{k}={v}' for k, v in ckpt.model.get('kwargs', {}).items())})"


def make_engine(ckpt: Checkpoint, opts: AnalysisOptions) -> Engine:
    opts.validate()
    device = resolve_device(opts.device)
    data = load_dataset(data_dir=opts.data_dir, device=device, **ckpt.data)
    if opts.subset is not None:
        smallest = min(len(getattr(data, s)) for s in opts.splits)
        if opts.subset > smallest:
            raise UserError(f"--subset {opts.subset} is larger than the split ({smallest} samples)")
    return Engine(ckpt.model, data, splits=tuple(opts.splits), subset=opts.subset, seed=opts.seed, bn=opts.bn,
                  batch_size=opts.batch_size, device=device, strategy=opts.strategy, bf16=opts.bf16)


def vector(engine: Engine, ckpt: Checkpoint) -> torch.Tensor:
    """A checkpoint as a point of the engine's parameter space, on the engine's device."""
    try:
        return engine.layout.flatten(ckpt.state_dict).to(engine.device)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{ckpt.path}: does not fit {_describe(ckpt)} ({exc})") from None


def parameter_norm(engine: Engine, v: torch.Tensor) -> float:
    """Euclidean norm over trainable parameters only (buffers are statistics, not a position)."""
    mask = ~engine.layout.mask("buffer").to(v.device)
    return float(v[mask].double().norm())


def open_result(
    out: str | Path,
    analysis: str,
    ckpts: Sequence[Checkpoint],
    opts: AnalysisOptions,
    coords: dict[str, np.ndarray],
    dims: list[str],
    *,
    normalization: str | None = None,
    identity: dict[str, Any] | None = None,
) -> ResultWriter:
    attrs = root_attrs(
        analysis=analysis,
        command=opts.command,
        checkpoints=[str(c.path) for c in ckpts],
        dataset_spec=ckpts[0].data,
        subset=opts.subset,
        bn_mode=opts.bn,
        seed=opts.seed,
        normalization=normalization,
    )
    attrs.update(identity or {})
    return ResultWriter.create_or_resume(out, analysis=analysis, attrs=attrs, coords=coords, dims=dims,
                                         splits=list(opts.splits), overwrite=opts.overwrite)


def compute(
    writer: ResultWriter,
    engine: Engine,
    points: Callable[[np.ndarray], torch.Tensor],
    opts: AnalysisOptions,
) -> None:
    """Evaluate every pending point of ``writer``; each chunk is written as soon as it is done."""
    pending = writer.pending()
    total = int(np.prod(writer.shape))
    done = total - len(pending)
    if opts.progress:
        opts.progress(done, total)
    # Points are made lazily, a chunk at a time: a 51x51 grid of a large model would
    # not fit in memory at once. ~256 MB of point vectors per chunk.
    step = chunk_size(engine, opts)
    for start in range(0, len(pending), step):
        idx = pending[start : start + step]
        results = engine.evaluate(points(idx))
        writer.write(idx, results)
        done += len(idx)
        if opts.progress:
            opts.progress(done, total)


def chunk_size(engine: Engine, opts: AnalysisOptions) -> int:
    return opts.chunk or max(1, min(256, (256 << 20) // (4 * engine.layout.dim)))


EPOCH_FILE = re.compile(r"epoch_(\d{4,})\.pt$")
STEP_FILE = re.compile(r"step_(\d{7,})\.pt$")


def run_checkpoints(run_dir: str | Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """The epoch and step checkpoints of RUN/<optimizer>, keyed by epoch and by step."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise UserError(f"{run_dir}: not an optimizer run directory (expected {folder}); give RUN/<optimizer>")
    epochs = {int(m.group(1)): p for p in folder.iterdir() if (m := EPOCH_FILE.search(p.name))}
    steps = {int(m.group(1)): p for p in folder.iterdir() if (m := STEP_FILE.search(p.name))}
    if not epochs:
        raise UserError(f"{folder}: no epoch_XXXX.pt checkpoints")
    return epochs, steps


def pick_epochs(available: dict[int, Path], wanted: Sequence[int], flag: str) -> list[Path]:
    missing = [e for e in wanted if e not in available]
    if missing:
        have = sorted(available)
        raise UserError(f"{flag}: no checkpoint for epoch {', '.join(map(str, missing))} "
                        f"(this run has epochs {have[0]}..{have[-1]})")
    return [available[e] for e in wanted]

"""What every analysis shares: loading checkpoints, building the engine, filling a result file.

An analysis is three things: the checkpoints it reads, the coordinates of its points, and
a function from a chunk of point indices to a (chunk, dim) tensor of parameter vectors.
`compute` does the rest: it evaluates only the points the result file lacks, writes
each chunk as soon as it is done (so a killed run resumes), and finishes the file.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape import distributed, models
from landscape.checkpoint import Checkpoint, atomic_torch_save, checkpoint_digest, fit_state_dict, load_checkpoint, \
    resolve_specs
from landscape.data import Dataset, load_dataset
from landscape.device import resolve_device
from landscape.batchnorm import BN_BATCH
from landscape.engine import Engine
from landscape.errors import UserError
from landscape.store import ResultWriter, root_attrs

log = logging.getLogger("landscape")
Progress = Callable[[int, int], None]  # (points done, points total)
SPLITS = ("train", "test")


@dataclass
class AnalysisOptions:
    """The options every analysis command takes (DESIGN.md "Common options")."""

    splits: Sequence[str] = SPLITS
    subset: int | None = None
    bn: str = "recompute"
    # BatchNorm statistics (bn="recompute"): from the whole train split (None) or a fixed seeded
    # subset of bn_samples train samples, never from `subset`; groups of bn_batch samples
    # (landscape.batchnorm has the exact definition).
    bn_samples: int | None = None
    bn_batch: int = BN_BATCH
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
    # What the checkpoints are weights of, when the files do not say (or to say otherwise):
    # the same meaning as `landscape train`'s options (see checkpoint.resolve_specs).
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    state_key: str | None = None  # key of the state_dict inside foreign checkpoint dicts

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
        if self.bn_samples is not None and self.bn_samples < 2:
            raise UserError(f"--bn-samples must be >= 2, got {self.bn_samples}")
        if self.bn_samples is not None and self.bn != "recompute":
            raise UserError("--bn-samples chooses the train samples BatchNorm statistics are recomputed from; "
                            "it needs --bn recompute")
        if self.bn_batch < 2:
            raise UserError(f"--bn-batch must be >= 2, got {self.bn_batch}")


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


CheckpointLike = str | Path | Checkpoint


def prepare(inputs: Sequence[CheckpointLike], opts: AnalysisOptions, engine: Engine | None = None
            ) -> tuple[list[Checkpoint], Engine]:
    """Checkpoints and the engine that scores them.

    ``inputs`` are paths (read safely: nothing in a file is imported) or loaded
    :class:`Checkpoint` objects. Without ``engine`` the model and data come from ``opts``
    (the user's ``--model``/``--dataset``) or else from what the files say; with one (the
    Python API: your own ``nn.Module`` and data) the checkpoints are scored by it. Every
    checkpoint's keys are fitted to the model (prefixes such as ``module.`` stripped, said
    in a note on the ``landscape`` logger and kept in ``Checkpoint.notes``).
    """
    if not inputs:
        raise UserError("no checkpoint given")
    ckpts = [c if isinstance(c, Checkpoint) else load_checkpoint(c, state_key=opts.state_key) for c in inputs]
    if engine is None:
        model_spec, data_spec = resolve_specs(ckpts, model=opts.model, model_options=opts.model_options,
                                              dataset=opts.dataset, data_options=opts.data_options)
        engine = make_engine(model_spec, data_spec, opts)
    reference = engine.model.state_dict()
    for c in ckpts:
        c.state_dict = fit_state_dict(c, reference)
        for note in c.notes:
            log.info("%s: %s", c.path, note)
    return ckpts, engine


def wrap_checkpoint(path: str | Path, out: str | Path, opts: AnalysisOptions, *, force: bool = False
                    ) -> tuple[Path, Checkpoint]:
    """Write ``path`` (a foreign checkpoint) as a self-describing landscape checkpoint at ``out``.

    The model and data come from ``opts`` (or the file); the keys are fitted to the model and
    the model is checked against the data with one small forward pass, so what is written
    always loads. A factory of the user's own is still named by later commands with --model
    (reading a file never imports code).
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; choose another -o or add --force")
    if out.is_dir():
        raise UserError(f"{out} is a directory")
    (ckpt,), engine = prepare([path], replace(opts, splits=("train",), bn="keep"))
    vector(engine, ckpt)  # shapes and dtypes fit, or one line now
    ckpt.model, ckpt.data = engine.model_spec, engine.data_spec
    atomic_torch_save(ckpt.to_dict(), out)
    return out, ckpt


def make_engine(model_spec: dict[str, Any], data_spec: dict[str, Any], opts: AnalysisOptions) -> Engine:
    """Load the data onto the device and build the engine; built-in models get the data's
    number of classes and input shape unless the spec says otherwise."""
    opts.validate()
    distributed.init()  # under torchrun: join the group first, so "cuda" is this rank's GPU
    device = resolve_device(opts.device)
    data_spec = dict(data_spec)
    data = load_dataset(data_spec.pop("name"), data_dir=opts.data_dir, device=device, **data_spec)
    model_spec = models.model_spec(model_spec["name"], model_spec.get("kwargs") or {}, data.num_classes,
                                   data.input_shape)
    return engine_for(model_spec, data, opts)


def engine_for(model: dict[str, Any] | torch.nn.Module, data: Dataset, opts: AnalysisOptions) -> Engine:
    """The engine of ``model`` (a spec or a module) on loaded ``data`` with the common options."""
    opts.validate()
    if opts.subset is not None:
        smallest = min(len(getattr(data, s)) for s in opts.splits)
        if opts.subset > smallest:
            raise UserError(f"--subset {opts.subset} is larger than the split ({smallest} samples)")
    if opts.bn_samples is not None and opts.bn_samples > len(data.train):
        raise UserError(f"--bn-samples {opts.bn_samples} is larger than the train split ({len(data.train)} samples)")
    return Engine(model, data, splits=tuple(opts.splits), subset=opts.subset, seed=opts.seed, bn=opts.bn,
                  bn_samples=opts.bn_samples, bn_batch=opts.bn_batch, batch_size=opts.batch_size,
                  device=data.device, strategy=opts.strategy, bf16=opts.bf16)


def vector(engine: Engine, ckpt: Checkpoint) -> torch.Tensor:
    """A checkpoint as a point of the engine's parameter space, on the engine's device."""
    try:
        return engine.layout.flatten(ckpt.state_dict).to(engine.device)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{ckpt.path}: does not fit model {engine.model_spec['name']!r} ({exc})") from None
    except UserError as exc:
        raise UserError(f"{ckpt.path}: {exc}") from None


DIRECTIONS_LIMIT_BYTES = 64 << 20  # directions larger than this are described, not stored


def store_directions(writer: ResultWriter, directions: dict[str, torch.Tensor], rule: str) -> None:
    """Store the directions of a result (float32, in the point layout of the engine), so the
    figure can be reproduced and the points recomputed; when they would exceed
    DIRECTIONS_LIMIT_BYTES only the exact rule that regenerates them is recorded."""
    size = sum(d.numel() * 4 for d in directions.values())
    if size <= DIRECTIONS_LIMIT_BYTES:
        for name, d in directions.items():
            writer.put(name, d.detach().float().cpu().numpy(),
                       {"layout": "the model's floating state_dict entries flattened in order", "rule": rule})
    else:
        writer.put("directions/not_stored", np.array(
            f"{size / 2**20:.0f} MiB is above the {DIRECTIONS_LIMIT_BYTES >> 20} MiB limit; regenerate exactly with "
            f"{rule} and this file's seed", dtype=object))


def parameter_norm(engine: Engine, v: torch.Tensor) -> float:
    """Euclidean norm over trainable parameters only (buffers are statistics, not a position)."""
    mask = ~engine.layout.mask("buffer").to(v.device)
    return float(v[mask].double().norm())


def open_result(
    out: str | Path,
    analysis: str,
    ckpts: Sequence[Checkpoint],
    engine: Engine,
    opts: AnalysisOptions,
    coords: dict[str, np.ndarray],
    dims: list[str],
    *,
    normalization: str | None = None,
    identity: dict[str, Any] | None = None,
) -> ResultWriter:
    """The result file, new or resumed. Under torchrun rank 0 alone opens it (one writer:
    no HDF5 locking between processes); the other ranks get a stand-in that knows the grid
    and whether the result is complete, writes nothing, and whose ``finish`` waits for rank 0."""

    def create(cls: type[ResultWriter] = ResultWriter) -> ResultWriter:
        attrs = result_attrs(analysis, ckpts, engine, opts, normalization)
        attrs.update(identity or {})
        if opts.bf16:  # other numbers than a float32 run: part of the file's identity
            attrs["precision"] = "bf16 autocast"
        return cls.create_or_resume(out, analysis=analysis, attrs=attrs, coords=coords, dims=dims,
                                    splits=list(opts.splits), overwrite=opts.overwrite)

    if not distributed.init():
        return create()
    writer, complete = distributed.on_main(lambda: create(_MainWriter), share=lambda w: w.complete)
    if writer is not None:
        return writer
    return _Follower(Path(out), analysis, coords, dims, list(opts.splits), complete)  # type: ignore[return-value]


def result_attrs(analysis: str, ckpts: Sequence[Checkpoint], engine: Engine, opts: AnalysisOptions,
                 normalization: str | None = None) -> dict[str, Any]:
    """The DESIGN.md root attributes, plus the model scored and how foreign files were read."""
    attrs = root_attrs(analysis=analysis, command=opts.command, checkpoints=[str(c.path) for c in ckpts],
                       dataset_spec=engine.data_spec, subset=opts.subset, bn_mode=opts.bn, seed=opts.seed,
                       normalization=normalization, digests=[checkpoint_digest(c) for c in ckpts])
    attrs["model"] = engine.model_spec
    if engine.recompute:
        # Which train samples the BatchNorm statistics came from, and in what groups: both
        # change the numbers, so both are part of the file's identity (-1: the whole split).
        attrs["bn_samples"] = -1 if engine.bn_samples is None else engine.bn_samples
        attrs["bn_batch"] = engine.bn_batch
    notes = [f"{c.path}: {note}" for c in ckpts for note in c.notes]
    if notes:
        attrs["checkpoint_notes"] = notes
    return attrs


class _MainWriter(ResultWriter):
    """Rank 0's writer under torchrun: finishing the file also releases the other ranks."""

    def finish(self) -> Path:
        path = super().finish()
        distributed.barrier()
        return path


class _Follower:
    """What ranks other than 0 hold instead of a ResultWriter: the grid, no file."""

    def __init__(self, path: Path, analysis: str, coords: dict[str, np.ndarray], dims: list[str],
                 splits: list[str], complete: bool) -> None:
        self.path, self.partial, self.analysis = path, Path(f"{path}.partial"), analysis
        self.coords = {k: np.asarray(v) for k, v in coords.items()}
        self.dims, self.splits, self.metrics = list(dims), splits, list(METRICS)
        self.shape = tuple(len(self.coords[d]) for d in dims)
        self.complete = complete

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def pending(self) -> np.ndarray:
        return np.empty(0, np.int64)  # rank 0 decides; compute() asks it

    def write(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("only rank 0 writes the result file")

    def put(self, *args: Any, **kwargs: Any) -> None:
        pass  # rank 0 stores extra datasets

    def close(self) -> None:
        pass

    def finish(self) -> Path:
        distributed.barrier()  # rank 0 has renamed the file when it gets here
        return self.path

    def __enter__(self) -> "_Follower":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def compute(
    writer: ResultWriter,
    engine: Engine,
    points: Callable[[np.ndarray], torch.Tensor],
    opts: AnalysisOptions,
) -> None:
    """Evaluate every pending point of ``writer``; each chunk is written as soon as it is done.

    Under torchrun the points are shared out dynamically (see :func:`_compute_sharded`).
    """
    if distributed.is_distributed():
        return _compute_sharded(writer, engine, points, opts)
    pending = writer.pending()
    total = int(np.prod(writer.shape))
    done = total - len(pending)
    if opts.progress:
        opts.progress(done, total)
    # Points are made lazily, a chunk at a time: a 51x51 grid of a large model would not fit
    # in memory at once (~256 MB of point vectors per chunk). Inside a chunk the engine
    # reports every point it finishes (the CPU loop scores one at a time, so this costs
    # nothing), and finished points are written at least every WRITE_SECONDS, so progress
    # moves and a killed run loses little.
    step, writes = chunk_size(engine, opts), 0
    for start in range(0, len(pending), step):
        idx = pending[start : start + step]
        vectors, finished, last_write = points(idx), [], time.monotonic()
        for sub, results in engine.evaluate_chunks(vectors):
            finished.append((idx[sub], results))
            done += len(sub)
            if time.monotonic() - last_write >= WRITE_SECONDS or sub[-1] == len(idx) - 1:
                writer.write(*_merge(finished))
                finished, last_write, writes = [], time.monotonic(), writes + 1
                _test_stop(writes)
            if opts.progress:
                opts.progress(done, total)


WRITE_SECONDS = 10.0


def _merge(parts: list[tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]]
           ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Several (indices, results) of engine chunks as one."""
    idx = np.concatenate([i for i, _ in parts])
    first = parts[0][1]
    return idx, {s: {m: np.concatenate([r[s][m] for _, r in parts]) for m in first[s]} for s in first}


def chunk_size(engine: Engine, opts: AnalysisOptions) -> int:
    return opts.chunk or max(1, min(256, (256 << 20) // (4 * engine.layout.dim)))


METRICS = ("loss", "accuracy")
CHUNKS_PER_RANK = 8  # under torchrun: at least this many chunks per rank, for balancing


def _compute_sharded(writer: ResultWriter, engine: Engine, points: Callable[[np.ndarray], torch.Tensor],
                     opts: AnalysisOptions) -> None:
    """``compute`` under torchrun: a work queue of chunks, rank 0 the only writer.

    Rank 0 reads the pending points from the ``done`` mask (so a killed run resumes, with
    any number of ranks) and cuts them into chunks, small enough that every rank gets
    several. Every rank, rank 0 included, takes the next chunk from a shared counter
    whenever it is free, so slow points hold up only the rank that has them. Other ranks
    post their results (float64, exactly as the engine returned them) to the store; rank
    0 writes them between its own chunks and at the end. Each point is evaluated alone
    with the same data, so the file equals a single-process run's.
    """
    plan = None
    if distributed.is_main():
        pending = writer.pending()
        per_rank = -(-len(pending) // (CHUNKS_PER_RANK * distributed.world_size()))
        floor = getattr(engine, "vmap_chunk", 1) if getattr(engine, "strategy", "loop") == "vmap" else 1
        step = opts.chunk or max(1, min(chunk_size(engine, opts), max(per_rank, floor)))
        plan = (pending, step, f"{os.getpid()}-{time.time_ns():x}")  # a fresh queue per call
    pending, step, token = distributed.broadcast_object(plan)
    chunks = [pending[i : i + step] for i in range(0, len(pending), step)]
    queue = distributed.WorkQueue(token, len(chunks))
    splits = list(opts.splits)
    rows = [(s, m) for s in splits for m in METRICS]

    if not distributed.is_main():
        while (k := queue.take()) is not None:
            results = engine.evaluate(points(chunks[k]))
            queue.post(k, np.stack([np.asarray(results[s][m], np.float64) for s, m in rows]).tobytes())
        return

    total = int(np.prod(writer.shape))
    done, written = total - len(pending), 0

    def save(idx: np.ndarray, results: dict[str, dict[str, np.ndarray]]) -> None:
        nonlocal done, written
        writer.write(idx, results)
        done, written = done + len(idx), written + 1
        if opts.progress:
            opts.progress(done, total)
        _test_stop(written)

    def store_posted(posted: list[tuple[int, bytes]]) -> None:
        for k, data in posted:
            values = np.frombuffer(data, np.float64).reshape(len(rows), len(chunks[k]))
            results: dict[str, dict[str, np.ndarray]] = {s: {} for s in splits}
            for (s, m), v in zip(rows, values):
                results[s][m] = v
            save(chunks[k], results)

    if opts.progress:
        opts.progress(done, total)
    while (k := queue.take()) is not None:
        save(chunks[k], engine.evaluate(points(chunks[k])))
        store_posted(queue.collect())
    while queue.pending():
        store_posted(queue.wait())


def _test_stop(chunks_written: int) -> None:
    """Tests only: ``LANDSCAPE_TEST_STOP_AFTER=N`` kills this process (SIGKILL, as a crash
    or an out-of-memory kill would) once it has written N chunks, to test resuming."""
    stop = os.environ.get("LANDSCAPE_TEST_STOP_AFTER")
    if stop and chunks_written >= int(stop):
        os.kill(os.getpid(), signal.SIGKILL)


EPOCH_FILE = re.compile(r"epoch_(\d{4,})\.pt$")
STEP_FILE = re.compile(r"step_(\d{7,})\.pt$")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def run_checkpoints(run_dir: str | Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """The epoch and step checkpoints of RUN/<optimizer>, keyed by epoch and by step."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise UserError(f"{run_dir}: not an optimizer run directory (expected {folder}); give RUN/<optimizer>, "
                        "a folder of checkpoint files or a list of them")
    epochs = {int(m.group(1)): p for p in folder.iterdir() if (m := EPOCH_FILE.search(p.name))}
    steps = {int(m.group(1)): p for p in folder.iterdir() if (m := STEP_FILE.search(p.name))}
    if not epochs:
        raise UserError(f"{folder}: no epoch_XXXX.pt checkpoints")
    return epochs, steps


@dataclass
class Series:
    """Checkpoints of one training run in order, keyed by epoch (or by position)."""

    items: dict[int, CheckpointLike]  # key -> checkpoint, keys ascending in training order
    steps: dict[int, CheckpointLike]  # RUN/<optimizer> only: step checkpoints keyed by step
    units: str  # what the keys count: "epoch" or "position in ..."
    run_dir: Path | None = None  # set for RUN/<optimizer>


def checkpoint_series(inputs: Sequence[CheckpointLike], opts: AnalysisOptions) -> Series:
    """RUN/<optimizer>, a folder of checkpoint files, files, globs, or loaded checkpoints, in order.

    Files are ordered by the epoch they store (landscape's, Lightning's ``epoch``) when every one
    stores a different epoch, else by the step they store, else by natural file-name order
    (``ckpt2`` before ``ckpt10``); Checkpoint objects without either keep the order given.
    """
    if isinstance(inputs, (str, Path, Checkpoint)):
        inputs = [inputs]
    if not inputs:
        raise UserError("no checkpoints given")
    if len(inputs) == 1 and not isinstance(inputs[0], Checkpoint) and (Path(inputs[0]) / "checkpoints").is_dir():
        epochs, steps = run_checkpoints(inputs[0])
        return Series(dict(sorted(epochs.items())), steps, "epoch", Path(inputs[0]))
    loaded = [c if isinstance(c, Checkpoint) else load_checkpoint(c, state_key=opts.state_key)
              for c in _expand(inputs)]
    epochs = [c.epoch for c in loaded]
    steps = [c.step for c in loaded]
    if None not in epochs and len(set(epochs)) == len(epochs):
        return Series(dict(sorted(zip(epochs, loaded))), {}, "epoch")  # type: ignore[arg-type]
    if None not in steps and len(set(steps)) == len(steps):
        ordered = [c for _, c in sorted(zip(steps, loaded), key=lambda pair: pair[0])]  # type: ignore[arg-type]
        return Series(dict(enumerate(ordered)), {}, "position in order of the stored step")
    return Series(dict(enumerate(loaded)), {}, "position in natural file-name order")


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _expand(inputs: Sequence[CheckpointLike]) -> list[CheckpointLike]:
    """Globs and folders become their checkpoint files, sorted naturally; objects stay as given."""
    files: list[Path] = []
    objects: list[CheckpointLike] = []
    for item in inputs:
        if isinstance(item, Checkpoint):
            objects.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()]
            runs = sorted(p.name for p in path.iterdir() if (p / "checkpoints").is_dir())
            if not found and runs:
                raise UserError(f"{path} is a run directory; give RUN/<optimizer>, e.g. {path / runs[0]}")
            if not found:
                raise UserError(f"{path}: no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) in this folder")
            files += found
        elif not path.exists() and any(ch in str(item) for ch in "*?["):
            found = [Path(p) for p in glob.glob(str(item)) if Path(p).is_file()]
            if not found:
                raise UserError(f"{item}: no files match this pattern")
            files += found
        else:
            files.append(path)  # a missing file is reported when it is read
    if objects and files:
        raise UserError("give either checkpoint files or loaded checkpoints, not both")
    return objects or sorted(set(files), key=_natural_key)


def lr_phases(series: Series) -> list[list[int]]:
    """The trained checkpoints' keys grouped into LR phases: maximal runs of one learning rate
    (Kobayashi's "training phases"), read from RUN/<optimizer>/metrics.jsonl or from the
    learning rate the checkpoints store."""
    keys = sorted(k for k in series.items if k >= 1 or series.units != "epoch")
    if series.run_dir is not None:
        lrs = _metrics_lrs(series.run_dir / "metrics.jsonl")
    else:
        lrs = {k: c.lr for k, c in series.items.items() if isinstance(c, Checkpoint) and c.lr is not None}
    missing = [k for k in keys if k not in lrs]
    if missing:
        raise UserError(f"--phase needs the learning rate of every checkpoint; none is known at {series.units} "
                        f"{missing[0]} (RUN/<optimizer>/metrics.jsonl, or checkpoints that store their lr)")
    phases: list[list[int]] = []
    for k in keys:
        if phases and lrs[k] == lrs[phases[-1][-1]]:
            phases[-1].append(k)
        else:
            phases.append([k])
    return phases


def _metrics_lrs(path: Path) -> dict[int, float]:
    lrs = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            row = json.loads(line)
            lrs[int(row["epoch"])] = float(row["lr"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a kill: the epochs before it still count
    return lrs


def phase_keys(series: Series, phase: int) -> tuple[list[int], int | None]:
    """The keys of LR phase ``phase`` (1-based) and the key just before it (its starting point:
    the initialization for phase 1 when the run has one, the previous phase's end otherwise)."""
    phases = lr_phases(series)
    if not 1 <= phase <= len(phases):
        raise UserError(f"--phase {phase}: these checkpoints have {len(phases)} LR phase"
                        f"{'s' if len(phases) != 1 else ''} (runs of one learning rate)")
    keys = phases[phase - 1]
    before = [k for k in series.items if k < keys[0]]
    return keys, (max(before) if before else None)


def pick(series: Series, wanted: Sequence[int], flag: str) -> list[CheckpointLike]:
    missing = [e for e in wanted if e not in series.items]
    if missing:
        have = sorted(series.items)
        raise UserError(f"{flag}: no checkpoint at {series.units} {', '.join(map(str, missing))} "
                        f"(these checkpoints have {have[0]}..{have[-1]})")
    return [series.items[e] for e in wanted]

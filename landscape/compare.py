"""Comparison tables with error bars: every optimizer, every seed, paired by initialization.

``compare`` trains each optimizer for each seed (and each value of one swept setting)
with :func:`landscape.train.train`, then reads the final metrics of every run and makes
the table of the seed papers: final test accuracy and loss of the last iterate and of the
averaged model, mean and sample standard deviation over seeds, and the *paired*
difference to a baseline optimizer (sgd by default) with a 95% confidence interval.

Layout of ``OUT``::

    OUT/compare.json            the plan: settings, seeds, sweep, epochs (and how --budget chose them)
    OUT/seed_<s>/               one `landscape train` run per seed: every optimizer not swept
    OUT/seed_<s>/<key>=<value>/ one run per seed and sweep value: the optimizers the key changes
    OUT/compare.h5              analysis "compare" (store schema, see :func:`write_result`)
    OUT/compare.csv             the table, one line per row

Pairing. Within a seed every run starts from the same initialization and sees the same
batches in the same order (the trainer seeds both from the seed alone), whichever run
directory it lives in. So the difference of two optimizers *within a seed* removes the
seed-to-seed variation, and the table reports

    d_s = metric(row, seed s) - metric(baseline last iterate, seed s)
    mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)      (Student t, n-1 degrees of freedom)

with sd the sample standard deviation (ddof=1). The baseline of a row is the baseline
optimizer's last iterate in the same sweep cell when the swept key changes it (``lr``), and
its single unswept run otherwise (``rho`` does not change sgd).

Resuming. A run is complete when every optimizer directory has ``final.pt`` and
``metrics.jsonl`` holds one line per epoch (and ``averaged.pt`` where one is made).
Complete runs are skipped; any other run is continued with ``train(..., resume=True)``,
which picks up after the last finished epoch. So the same command after a kill continues
with exactly the runs it lacks.

Budget. ``budget`` (seconds) replaces ``epochs``: two epochs of every optimizer of the first
run are trained in ``OUT/.budget-probe`` and timed; the epoch count is then the largest E
with  probe + runs x startup + E x (sum over runs of the measured seconds per epoch of their
optimizers) <= budget. The choice is stored in ``compare.json`` and reused when the same
command is run again, so a resumed compare trains the same number of epochs.

Sharpness. With ``sharpness=True`` (``--sharpness``) every row also gets the top Hessian
eigenvalue of its model on a fixed subset of the training split, mean and std over seeds.
It needs :mod:`landscape.hessian` and its analysis (checked when this module is imported;
see :data:`SHARPNESS`); it is off by default because it costs a few seconds per checkpoint.

torchrun. Every process runs the same plan in the same order: training is
DistributedDataParallel (:func:`landscape.train.train`), the sharpness analysis shares the
data out. Rank 0 alone looks at and writes ``OUT`` (the plan, which runs are done, the
budget probe's timings, the sharpness cache, ``compare.h5``, ``compare.csv``) and hands
its findings to the other ranks, so they never disagree about what to train next.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from landscape import distributed
from landscape.checkpoint import atomic_write_text
from landscape.errors import UserError
from landscape.train import OPTIMIZERS, TrainConfig, averages, make_writable_dir, train

FORMAT = "landscape-compare/1"
BASELINE_DEFAULT = "sgd"
CONFIDENCE = 0.95
CI_METHOD = ("paired differences to the baseline's last iterate within each seed; "
             "mean +- t(0.975, n-1) * sd / sqrt(n), Student t with n-1 degrees of freedom, sd with ddof=1")
STD_METHOD = "sample standard deviation over seeds (ddof=1)"
PROBE_EPOCHS = 2

# Settings --sweep accepts: type, and the optimizers they change (None: every optimizer).
SWEEP_KEYS: dict[str, tuple[type, frozenset[str] | None]] = {
    "lr": (float, None),
    "momentum": (float, None),
    "weight_decay": (float, None),
    "batch_size": (int, None),
    "rho": (float, frozenset({"sam", "asam"})),
    "gamma0": (float, frozenset({"phase"})),
    "swa_lr": (float, frozenset({"swa"})),
    "swa_start": (int, frozenset({"swa"})),
    "avg_start": (int, frozenset({"asgd"})),  # and every optimizer when --average is on
    "asam_eta": (float, frozenset({"asam"})),
    "lookahead_k": (int, frozenset({"lookahead"})),
    "lookahead_alpha": (float, frozenset({"lookahead"})),
}

METRICS = ("test_acc", "test_loss", "train_acc", "train_loss")  # metrics.jsonl keys, per row and seed
TABLE_METRICS = ("test_acc", "test_loss")  # summarized with paired differences
# metrics.jsonl key -> (split, store metric)
STORE_NAMES = {"test_acc": ("test", "accuracy"), "test_loss": ("test", "loss"),
               "train_acc": ("train", "accuracy"), "train_loss": ("train", "loss")}


# ============================================================================ sharpness hook

def _find_sharpness() -> Callable[..., float] | None:
    """A ``top_eigenvalue(checkpoint, *, split, subset, device, seed) -> float`` when the
    Hessian code (:mod:`landscape.hessian` and its analysis :mod:`landscape.analyses.sharpness`)
    is installed, else None.

    The value is the algebraically largest Hessian eigenvalue of the mean cross-entropy on
    ``split`` (a fixed seeded subset of ``subset`` samples), BatchNorm statistics recomputed,
    by Lanczos; the analysis writes ``sharpness_<final|averaged>.h5`` beside the checkpoint
    (so ``landscape report RUN`` draws it, and a rerun reuses it).
    """
    try:
        import landscape.hessian  # noqa: F401  (the Hessian issue has landed)
        from landscape.analyses.common import AnalysisOptions
        from landscape.analyses.sharpness import SharpnessOptions, sharpness
    except ImportError:
        return None

    def top_eigenvalue(checkpoint: Path, *, split: str = "train", subset: int | None = None,
                       device: str = "auto", seed: int = 0) -> float:
        from landscape.store import load_result

        checkpoint = Path(checkpoint)
        out = checkpoint.with_name(f"sharpness_{checkpoint.stem}.h5")
        opts = AnalysisOptions(splits=(split,), subset=subset, device=device, seed=seed, overwrite=True,
                               command=f"landscape compare (sharpness of {checkpoint})")
        path = sharpness(checkpoint, out, SharpnessOptions(top_k=1, sam=False, tol=SHARPNESS_TOL), opts)
        return float(np.asarray(load_result(path).extra["eigenvalues"]).ravel()[0])

    return top_eigenvalue


SHARPNESS_SUBSET = 1024  # training samples the eigenvalue is computed on (a fixed subset, seed 0)
SHARPNESS_TOL = 1e-3  # Lanczos: Ritz residual bound / |lambda|; the value is good to about this
#: The sharpness function (checked when this module is imported), or None; tests may replace it.
SHARPNESS: Callable[..., float] | None = _find_sharpness()


# ============================================================================ sweep

@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[float | int, ...]

    def label(self, value: float | int) -> str:
        """The cell's name (and directory): ``lr=0.05``; floats in their shortest exact form."""
        return f"{self.key}={value!r}"

    def affects(self, optimizer: str, cfg: TrainConfig) -> bool:
        targets = SWEEP_KEYS[self.key][1]
        if targets is None:
            return True
        if self.key == "avg_start":
            return optimizer == "asgd" or (cfg.average and optimizer not in ("swa", "phase"))
        return optimizer in targets


def parse_sweep(text: str) -> Sweep:
    """``"lr=0.05,0.1,0.2"`` -> Sweep("lr", (0.05, 0.1, 0.2)); anything else is a UserError."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise UserError(f"--sweep {text!r}: expected key=v1,v2,... (e.g. lr=0.05,0.1,0.2)")
    if key not in SWEEP_KEYS:
        raise UserError(f"--sweep {text!r}: cannot sweep {key!r}; choose from {', '.join(SWEEP_KEYS)}")
    kind = SWEEP_KEYS[key][0]
    parsed: list[float | int] = []
    for raw in values.split(","):
        raw = raw.strip()
        try:
            value = kind(raw) if kind is float else int(raw, 10)
        except ValueError:
            raise UserError(f"--sweep {text!r}: {raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise UserError(f"--sweep {text!r}: {raw!r} is not a finite number")
        parsed.append(value)
    if len(set(parsed)) != len(parsed):
        raise UserError(f"--sweep {text!r}: a value is given twice")
    return Sweep(key, tuple(parsed))


# ============================================================================ plan

@dataclass
class Run:
    """One `train()` call: one seed, one sweep cell, the optimizers that belong to it."""

    seed: int
    cell: str  # "" for the unswept run, else "key=value"
    optimizers: list[str]
    config: TrainConfig  # resolved
    directory: Path

    def state(self) -> str:
        """'done', 'partial' (something to resume) or 'missing'."""
        if not (self.directory / "config.json").exists():
            return "missing"
        return "done" if all(optimizer_done(self.directory / o, self.config) for o in self.optimizers) else "partial"


def optimizer_done(directory: Path, cfg: TrainConfig) -> bool:
    """final.pt, one metrics line per epoch ending at the last epoch, averaged.pt where made."""
    if not (directory / "final.pt").is_file():
        return False
    if averages(directory.name, cfg) and not (directory / "averaged.pt").is_file():
        return False
    rows = _metrics(directory / "metrics.jsonl")
    return rows is not None and len(rows) == cfg.epochs and rows[-1].get("epoch") == cfg.epochs


def _metrics(path: Path) -> list[dict[str, Any]] | None:
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return None


@dataclass
class Row:
    """One line of the table: an optimizer (in a sweep cell), last iterate or averaged model."""

    optimizer: str
    cell: str
    model: str  # "last" | "averaged"
    runs: list[Run]  # one per seed
    baseline: int | None = None  # index of the baseline row


@dataclass
class Plan:
    config: TrainConfig  # base config (seed = first seed), not resolved
    seeds: list[int]
    sweep: Sweep | None
    baseline: str | None
    out: Path
    runs: list[Run] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return self.config.epochs


def _resolve(cfg: TrainConfig, where: str) -> TrainConfig:
    try:
        return cfg.resolved()
    except UserError as exc:
        raise UserError(f"{where}: {exc}" if where else str(exc)) from None


def make_plan(config: TrainConfig, out: str | Path, *, seeds: int = 3, first_seed: int = 0,
              sweep: Sweep | None = None, baseline: str | None = None) -> Plan:
    """Every run and every table row; validates everything before anything is trained."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if first_seed < 0:
        raise UserError(f"--seed must be >= 0, got {first_seed}")
    optimizers = list(config.optimizers) or list(_resolve(config, "").optimizers)  # the preset's, else sgd
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if len(set(optimizers)) != len(optimizers):
        raise UserError("each --optimizer may be given once")
    if baseline is None:
        baseline = BASELINE_DEFAULT if BASELINE_DEFAULT in optimizers else None
    elif baseline not in optimizers:
        raise UserError(f"--baseline {baseline}: not among the optimizers ({', '.join(optimizers)})")
    config = replace(config, optimizers=optimizers, seed=first_seed)
    resolved = _resolve(config, "")  # the settings themselves, before any sweep
    out = Path(out)
    seed_list = [first_seed + i for i in range(seeds)]
    swept: list[str] = []
    if sweep is not None:
        if sweep.key not in SWEEP_KEYS:
            raise UserError(f"--sweep: cannot sweep {sweep.key!r}; choose from {', '.join(SWEEP_KEYS)}")
        if not sweep.values:
            raise UserError(f"--sweep {sweep.key}: no values")
        swept = [o for o in optimizers if sweep.affects(o, config)]
        if not swept:
            targets = SWEEP_KEYS[sweep.key][1] or ()
            raise UserError(f"--sweep {sweep.key} changes none of the optimizers "
                            f"({', '.join(optimizers)}); it applies to {', '.join(sorted(targets))}")
        if sweep.key == "lr" and resolved.schedule == "phases" and config.phases is not None:
            raise UserError("--sweep lr with --phases: the phases fix the learning rates; leave --phases out "
                            "(the default phases scale with lr) or use --schedule cosine")
    plain = [o for o in optimizers if o not in swept]

    plan = Plan(config=config, seeds=seed_list, sweep=sweep, baseline=baseline, out=out)
    by_key: dict[tuple[int, str], Run] = {}
    for seed in seed_list:
        seed_dir = out / f"seed_{seed}"
        if plain:
            cfg = replace(config, optimizers=plain, seed=seed)
            run = Run(seed, "", plain, _resolve(cfg, ""), seed_dir)
            plan.runs.append(run)
            by_key[(seed, "")] = run
        for value in (sweep.values if sweep else ()):
            label = sweep.label(value)
            cfg = replace(config, optimizers=swept, seed=seed, **{sweep.key: value})
            run = Run(seed, label, swept, _resolve(cfg, f"--sweep {label}"), seed_dir / label)
            plan.runs.append(run)
            by_key[(seed, label)] = run

    cells = [""] + [sweep.label(v) for v in sweep.values] if sweep else [""]
    index: dict[tuple[str, str, str], int] = {}
    for name in optimizers:
        for cell in cells:
            if (seed_list[0], cell) not in by_key or name not in by_key[(seed_list[0], cell)].optimizers:
                continue
            runs = [by_key[(s, cell)] for s in seed_list]
            kinds = ["last", "averaged"] if averages(name, runs[0].config) else ["last"]
            for kind in kinds:
                index[(name, cell, kind)] = len(plan.rows)
                plan.rows.append(Row(name, cell, kind, runs))
    if baseline is not None:
        for row in plan.rows:
            # The baseline in the same sweep cell, else its unswept run; a row of an unswept
            # optimizer when the baseline itself is swept has no single baseline.
            row.baseline = index.get((baseline, row.cell, "last"), index.get((baseline, "", "last")))
    return plan


# ============================================================================ running

@dataclass
class Table:
    """The numbers of a comparison; what the HDF5, the CSV, JSON and the printed table hold."""

    seeds: list[int]
    epochs: int
    baseline: str | None
    sweep_key: str | None
    optimizer: list[str]
    cell: list[str]
    model: list[str]
    baseline_row: list[int]  # -1: none
    values: dict[str, np.ndarray]  # METRICS key -> (rows, seeds)
    stats: dict[str, dict[str, np.ndarray]]  # metric -> mean, std, diff_mean, diff_std, diff_ci_low, diff_ci_high
    paired: dict[str, np.ndarray]  # metric -> (rows, seeds) per-seed differences to the baseline
    sharpness: np.ndarray | None = None  # (rows, seeds)
    runs: list[list[str]] = field(default_factory=list)  # (rows, seeds) run directory of each value

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per row, plain Python (for --json and the CSV)."""
        records = []
        for i in range(len(self.optimizer)):
            rec: dict[str, Any] = {"optimizer": self.optimizer[i], "sweep": self.cell[i] or None,
                                   "model": self.model[i], "n": len(self.seeds),
                                   "baseline": None if self.baseline_row[i] < 0 else
                                   _row_name(self, self.baseline_row[i])}
            for metric in self.stats:
                s = self.stats[metric]
                rec[metric] = {"mean": _num(s["mean"][i]), "std": _num(s["std"][i]),
                               "per_seed": [_num(v) for v in self._row_values(metric, i)]}
                if "diff_mean" in s and self.baseline_row[i] >= 0:
                    rec[f"diff_{metric}"] = {"mean": _num(s["diff_mean"][i]), "std": _num(s["diff_std"][i]),
                                             "ci_low": _num(s["diff_ci_low"][i]),
                                             "ci_high": _num(s["diff_ci_high"][i]),
                                             "per_seed": [_num(v) for v in self.paired[metric][i]]}
            records.append(rec)
        return records

    def _row_values(self, metric: str, i: int) -> np.ndarray:
        return self.sharpness[i] if metric == "sharpness" else self.values[metric][i]


def _row_name(t: Table, i: int) -> str:
    name = t.optimizer[i] + (" (averaged)" if t.model[i] == "averaged" else "")
    return f"{name} [{t.cell[i]}]" if t.cell[i] else name


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class CompareResult:
    plan: Plan
    table: Table
    h5: Path
    csv: Path
    trained: list[Run]  # runs trained or continued by this call
    skipped: list[Run]  # runs already complete
    budget: dict[str, Any] | None = None


Event = Callable[[dict[str, Any]], None]


def compare(config: TrainConfig, out: str | Path, *, seeds: int = 3, first_seed: int = 0,
            sweep: Sweep | str | None = None, baseline: str | None = None, budget: float | None = None,
            sharpness: bool = False, sharpness_subset: int | None = SHARPNESS_SUBSET,
            force: bool = False, command: str = "landscape compare",
            progress: Callable[[dict[str, Any]], None] | None = None,
            on_event: Event | None = None) -> CompareResult:
    """Train what is missing, then write ``OUT/compare.h5`` and ``OUT/compare.csv``.

    ``progress`` is the trainer's per-batch hook; ``on_event`` hears about the plan
    (``{"event": "probe" | "budget" | "run" | "skip" | "sharpness", ...}``).
    """
    distributed.init()  # under torchrun: every rank trains and measures, rank 0 writes
    emit = on_event if on_event is not None and distributed.is_main() else (lambda event: None)
    if sharpness and SHARPNESS is None:
        raise UserError("--sharpness needs the Hessian code (landscape.hessian and landscape.analyses.sharpness), "
                        "which this installation lacks")
    if sharpness_subset is not None and sharpness_subset < 1:
        raise UserError(f"--sharpness-subset must be >= 1, got {sharpness_subset}")
    if isinstance(sweep, str):
        sweep = parse_sweep(sweep)
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise UserError(f"--budget must be a positive number of seconds, got {budget!r}")
    out = Path(out)
    if budget is not None and config.phases is not None and config.schedule in (None, "phases"):
        raise UserError("--budget chooses the number of epochs, so --phases (which fixes it) cannot be given too")
    plan = make_plan(config, out, seeds=seeds, first_seed=first_seed, sweep=sweep, baseline=baseline)
    distributed.on_main(lambda: _prepare_out(plan, force=force))

    budget_record = None
    if budget is not None:
        budget_record = _choose_epochs(plan, float(budget), progress=progress, emit=emit)
        plan = make_plan(replace(config, epochs=budget_record["epochs"]), out, seeds=seeds, first_seed=first_seed,
                         sweep=sweep, baseline=baseline)

    def settle() -> list[TrainConfig]:
        for run in plan.runs:  # every mismatch before anything is written or trained
            _check_same_settings(run)
        _write_plan(plan, budget_record)
        return [run.config for run in plan.runs]

    _, configs = distributed.on_main(settle, share=lambda found: found)
    for run, cfg in zip(plan.runs, configs):
        run.config = cfg  # a started run keeps its device: the same on every rank

    trained, skipped = [], []
    for k, run in enumerate(plan.runs, start=1):
        _, state = distributed.on_main(run.state, share=lambda found: found)
        if state == "done":
            skipped.append(run)
            emit({"event": "skip", "run": run, "index": k, "total": len(plan.runs)})
            continue
        emit({"event": "run", "run": run, "index": k, "total": len(plan.runs), "state": state})
        train(run.config, run.directory, resume=True, progress=progress)
        distributed.on_main(lambda run=run: _check_trained(run))
        trained.append(run)

    # Every rank reads the finished metrics (a shared filesystem, as train --resume needs).
    table = make_table(plan, sharpness=sharpness, sharpness_subset=sharpness_subset, emit=emit)
    _, (h5, csv_path) = distributed.on_main(
        lambda: (write_result(plan, table, command, sharpness_subset), write_csv(table, out / "compare.csv")),
        share=lambda paths: paths)
    return CompareResult(plan, table, h5, csv_path, trained, skipped, budget_record)


def _check_trained(run: Run) -> None:
    if run.state() != "done":  # e.g. averaged.pt deleted after training had finished
        raise UserError(f"{run.directory}: still incomplete after training (a deleted averaged.pt?); "
                        "remove that directory and run the same command again")


def _prepare_out(plan: Plan, *, force: bool) -> None:
    out = plan.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    ours = (out / "compare.json").exists() or any(p.is_dir() for p in out.glob("seed_*"))
    if out.exists() and any(out.iterdir()) and not ours:
        raise UserError(f"--out {out}: not empty and not a compare directory; choose another --out")
    if force and out.exists():
        for seed in plan.seeds:
            seed_dir = out / f"seed_{seed}"
            if (seed_dir / "config.json").exists() or any(seed_dir.glob("*/config.json")):
                shutil.rmtree(seed_dir)
        for name in ("compare.json", "compare.h5", "compare.h5.partial", "compare.csv", "sharpness.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / ".budget-probe", ignore_errors=True)
    make_writable_dir(out)


IGNORED_SETTINGS = ("device", "eval_batch_size")  # where a run is computed does not change what it is


def _check_same_settings(run: Run) -> None:
    """Refuse a run directory made with other settings; a started run keeps its device."""
    path = run.directory / "config.json"
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text())["config"]
        run.config = replace(run.config, **{k: previous[k] for k in IGNORED_SETTINGS if k in previous})
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is unreadable; remove {run.directory} or add --force to start over") from None
    now = json.loads(json.dumps(asdict(run.config)))
    changed = sorted(k for k in set(previous) | set(now)
                     if k not in IGNORED_SETTINGS and previous.get(k) != now.get(k))
    if changed:
        what = "; ".join(f"{k} {previous.get(k)!r} there, {now.get(k)!r} now" for k in changed[:4])
        raise UserError(f"{run.directory} was trained with other settings ({what}); run the same command "
                        "again, choose another --out, or add --force to start over")


def _plan_record(plan: Plan) -> dict[str, Any]:
    return {"format": FORMAT, "config": asdict(plan.config), "seeds": plan.seeds,
            "sweep": None if plan.sweep is None else {"key": plan.sweep.key, "values": list(plan.sweep.values)},
            "baseline": plan.baseline, "epochs": plan.epochs,
            "runs": [str(r.directory.relative_to(plan.out)) for r in plan.runs]}


def _write_plan(plan: Plan, budget: dict[str, Any] | None) -> None:
    record = _plan_record(plan)
    path = plan.out / "compare.json"
    if budget is None and path.exists():
        try:
            budget = json.loads(path.read_text()).get("budget")
        except (OSError, ValueError, AttributeError):
            budget = None
        if budget and budget.get("epochs") != plan.epochs:
            budget = None  # an old choice for other settings
    record["budget"] = budget
    atomic_write_text(path, json.dumps(record, indent=2))


def _choose_epochs(plan: Plan, budget: float, *, progress, emit: Event) -> dict[str, Any]:
    """Time PROBE_EPOCHS epochs of every optimizer of the first run, then fit the budget.

    Under torchrun the probe trains on every rank and rank 0's clock decides for all."""
    _, stored = distributed.on_main(lambda: _stored_budget(plan, budget), share=lambda found: found)
    if stored is not None:
        emit({"event": "budget", "reused": True, **stored})
        return stored
    first = plan.runs[0]
    optimizers = list(dict.fromkeys(o for r in plan.runs if r.seed == first.seed for o in r.optimizers))
    probe_cfg = replace(plan.config, optimizers=optimizers, epochs=PROBE_EPOCHS, seed=first.seed, phases=None,
                        avg_start=None, swa_start=None)
    if plan.sweep is not None:
        probe_cfg = replace(probe_cfg, **{plan.sweep.key: plan.sweep.values[0]})
    if plan.sweep is not None and plan.sweep.key in ("avg_start", "swa_start"):
        probe_cfg = replace(probe_cfg, **{plan.sweep.key: None})
    emit({"event": "probe", "optimizers": optimizers, "epochs": PROBE_EPOCHS})
    marks: dict[tuple[str, int], float] = {}

    def timer(event: dict[str, Any]) -> None:
        if "epoch_done" in event:
            marks[(event["optimizer"], event["epoch_done"])] = time.perf_counter()
        if progress:
            progress(event)

    where = plan.out / ".budget-probe"
    start = time.perf_counter()
    try:
        train(probe_cfg, where, force=True, progress=timer)
    finally:
        if distributed.is_main():
            shutil.rmtree(where, ignore_errors=True)
    timing = None
    if distributed.is_main():  # the trainer reports epochs (the marks) on rank 0 only
        timing = (time.perf_counter() - start,
                  {o: marks[(o, PROBE_EPOCHS)] - marks[(o, PROBE_EPOCHS - 1)] for o in optimizers})
    probe_seconds, per_epoch = distributed.broadcast_object(timing)
    startup = max(0.0, probe_seconds - PROBE_EPOCHS * sum(per_epoch.values()))  # data, init, checkpoints
    epoch_cost = sum(per_epoch[o] for r in plan.runs for o in r.optimizers)  # one epoch of every run
    fixed = probe_seconds + len(plan.runs) * startup
    epochs = int((budget - fixed) // epoch_cost) if epoch_cost > 0 else 1
    if epochs < 1:
        raise UserError(f"--budget {budget:g}: one epoch of all {len(plan.runs)} runs takes about "
                        f"{fixed + epoch_cost:.0f} s here (measured); give more seconds, fewer seeds or optimizers")
    record = {"seconds": budget, "epochs": epochs, "probe_seconds": round(probe_seconds, 3),
              "seconds_per_epoch": {o: round(v, 4) for o, v in per_epoch.items()},
              "startup_seconds_per_run": round(startup, 3), "runs": len(plan.runs),
              "predicted_seconds": round(fixed + epochs * epoch_cost, 1),
              "rule": f"largest E with probe + runs x startup + E x (seconds per epoch of every run) <= {budget:g}"}
    emit({"event": "budget", "reused": False, **record})
    return record


def _stored_budget(plan: Plan, budget: float) -> dict[str, Any] | None:
    """The epochs chosen for this budget and these settings before (in compare.json), if any."""
    path = plan.out / "compare.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
        stored = old.get("budget") or {}
        same = {k: v for k, v in old.get("config", {}).items() if k not in ("epochs", "phases")} == \
               {k: v for k, v in asdict(plan.config).items() if k not in ("epochs", "phases")}
        if stored.get("seconds") == budget and same and old.get("seeds") == plan.seeds \
                and old.get("sweep") == (None if plan.sweep is None else
                                         {"key": plan.sweep.key, "values": list(plan.sweep.values)}):
            return stored
    except (OSError, ValueError, AttributeError):
        pass
    return None


# ============================================================================ the table

def _final_line(run: Run, optimizer: str) -> dict[str, Any]:
    rows = _metrics(run.directory / optimizer / "metrics.jsonl")
    if not rows or rows[-1].get("epoch") != run.config.epochs:
        raise UserError(f"{run.directory / optimizer}: training has not finished; run the same command again")
    return rows[-1]


def paired_stats(values: np.ndarray, reference: np.ndarray | None) -> dict[str, np.ndarray]:
    """Mean and sample std over the last axis; with a reference (same shape), the paired
    differences' mean, std and 95% Student-t interval with n-1 degrees of freedom."""
    from scipy import stats as st

    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    out = {"mean": values.mean(axis=-1),
           "std": values.std(axis=-1, ddof=1) if n > 1 else np.full(values.shape[:-1], np.nan)}
    if reference is not None:
        d = values - reference
        mean = d.mean(axis=-1)
        sd = d.std(axis=-1, ddof=1) if n > 1 else np.full(d.shape[:-1], np.nan)
        half = st.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
        out.update(diff_mean=mean, diff_std=sd, diff_ci_low=mean - half, diff_ci_high=mean + half)
    return out


def make_table(plan: Plan, *, sharpness: bool = False, sharpness_subset: int | None = SHARPNESS_SUBSET,
               emit: Event | None = None) -> Table:
    rows, seeds = plan.rows, plan.seeds
    values = {m: np.full((len(rows), len(seeds)), np.nan) for m in METRICS}
    runs = []
    for i, row in enumerate(rows):
        runs.append([str(r.directory / row.optimizer) for r in row.runs])
        for j, run in enumerate(row.runs):
            line = _final_line(run, row.optimizer)
            for m in METRICS:
                key = f"averaged_{m}" if row.model == "averaged" else m
                v = line.get(key)
                values[m][i, j] = np.nan if v is None else float(v)
    baseline_row = [-1 if r.baseline is None else r.baseline for r in rows]
    stats, paired = {}, {}
    for m in TABLE_METRICS:
        ref = None
        if plan.baseline:
            ref = values[m][[max(b, 0) for b in baseline_row]]
            ref[np.asarray(baseline_row) < 0] = np.nan  # no baseline: no difference
        stats[m] = paired_stats(values[m], ref)
        if ref is not None:
            paired[m] = values[m] - ref
    sharp = _sharpness(plan, rows, sharpness_subset, emit) if sharpness else None
    if sharp is not None:
        stats["sharpness"] = paired_stats(sharp, None)
    return Table(seeds=list(seeds), epochs=plan.epochs, baseline=plan.baseline,
                 sweep_key=plan.sweep.key if plan.sweep else None,
                 optimizer=[r.optimizer for r in rows], cell=[r.cell for r in rows], model=[r.model for r in rows],
                 baseline_row=baseline_row, values=values, stats=stats, paired=paired, sharpness=sharp, runs=runs)


def _checkpoint(run: Run, row: Row) -> Path:
    return run.directory / row.optimizer / ("averaged.pt" if row.model == "averaged" else "final.pt")


def _sharpness(plan: Plan, rows: list[Row], subset: int | None, emit: Event | None) -> np.ndarray:
    """Top Hessian eigenvalue of every row's model per seed; cached in OUT/sharpness.json by the
    checkpoint's sha256 (asgd's last iterate is sgd's: one computation)."""
    from landscape.checkpoint import file_sha256

    if SHARPNESS is None:
        raise UserError("--sharpness needs the Hessian code (landscape.hessian), which this installation lacks")
    cache_path = plan.out / "sharpness.json"

    def read_cache() -> dict[str, float]:
        try:
            return json.loads(cache_path.read_text()) if cache_path.exists() else {}
        except (OSError, ValueError):
            return {}

    # Under torchrun: rank 0's cache and keys, so every rank computes the same checkpoints
    # (each computation is collective) in the same order.
    out = np.full((len(rows), len(plan.seeds)), np.nan)
    todo = [(i, j) for i in range(len(rows)) for j in range(len(plan.seeds))]
    _, (cache, keys) = distributed.on_main(
        lambda: (read_cache(), [f"{file_sha256(_checkpoint(rows[i].runs[j], rows[i]))}:train:{subset}"
                                for i, j in todo]), share=lambda found: found)
    for k, ((i, j), key) in enumerate(zip(todo, keys), start=1):
        row, run = rows[i], rows[i].runs[j]
        ckpt = _checkpoint(run, row)
        if key not in cache:
            if emit:
                emit({"event": "sharpness", "checkpoint": ckpt, "index": k, "total": len(todo)})
            cache[key] = float(SHARPNESS(ckpt, split="train", subset=subset, device=run.config.device, seed=0))
            if distributed.is_main():
                atomic_write_text(cache_path, json.dumps(cache, indent=1))
        out[i, j] = cache[key]
    return out


# ============================================================================ files

def write_result(plan: Plan, table: Table, command: str, sharpness_subset: int | None = SHARPNESS_SUBSET) -> Path:
    """``OUT/compare.h5`` through the store: dims (row, seed), splits train/test, metrics
    loss/accuracy (final values per row and seed); row labels as non-dimension coordinates
    ``optimizer``, ``sweep``, ``model``; extra datasets ``stats/<metric>/<stat>``,
    ``paired/<metric>`` (per-seed differences to the baseline), ``baseline_row``, ``run``
    and ``sharpness`` (when computed)."""
    import h5py

    from landscape.store import ResultWriter, root_attrs

    rows = plan.rows
    first = plan.runs[0]
    data_spec = json.loads((first.directory / "config.json").read_text()).get("data", {"name": plan.config.dataset})
    checkpoints = [str(_checkpoint(run, row)) for row in rows for run in row.runs]
    attrs = root_attrs("compare", command, checkpoints, data_spec, None, "recompute", plan.seeds[0])
    attrs.update(
        seeds=plan.seeds, optimizers=list(plan.config.optimizers), epochs=plan.epochs,
        baseline=plan.baseline or "", sweep_key=plan.sweep.key if plan.sweep else "",
        sweep_values=list(plan.sweep.values) if plan.sweep else [],
        config=asdict(plan.config), std=STD_METHOD, ci=CI_METHOD, confidence=CONFIDENCE,
        sharpness=(f"top Hessian eigenvalue (Lanczos, tol {SHARPNESS_TOL:g}) of the mean train loss on "
                   f"{'all samples' if sharpness_subset is None else f'a fixed subset of {sharpness_subset}'}, "
                   "BatchNorm recomputed") if table.sharpness is not None else "",
    )
    strings = lambda xs: np.array(list(xs), dtype=h5py.string_dtype())  # noqa: E731
    coords = {"row": np.arange(len(rows)), "seed": np.asarray(plan.seeds),
              "optimizer": strings(table.optimizer), "sweep": strings(table.cell), "model": strings(table.model)}
    writer = ResultWriter.create_or_resume(plan.out / "compare.h5", analysis="compare", attrs=attrs, coords=coords,
                                           dims=["row", "seed"], splits=["train", "test"],
                                           metrics=["loss", "accuracy"], overwrite=True)
    with writer:
        results: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
        for key, (split, metric) in STORE_NAMES.items():
            results[split][metric] = table.values[key].ravel()
        writer.write(np.arange(writer.size), results)
        writer.put("baseline_row", np.asarray(table.baseline_row, dtype=np.int64))
        writer.put("run", strings([str(Path(p).relative_to(plan.out)) for r in table.runs for p in r])
                   .reshape(len(rows), len(plan.seeds)))
        for metric, st in table.stats.items():
            for name, arr in st.items():
                writer.put(f"stats/{metric}/{name}", np.asarray(arr, dtype=np.float64),
                           {"dims": ["row"]})
        for metric, arr in table.paired.items():
            writer.put(f"paired/{metric}", arr, {"dims": ["row", "seed"]})
        if table.sharpness is not None:
            writer.put("sharpness", table.sharpness, {"dims": ["row", "seed"]})
        return writer.finish()


CSV_STATS = ("mean", "std", "diff_mean", "diff_ci_low", "diff_ci_high")


def csv_text(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["optimizer", "sweep", "model", "n", "baseline"]
    metrics = [m for m in table.stats]
    for m in metrics:
        header += [f"{m}_{s}" for s in CSV_STATS if s in table.stats[m]]
    for m in TABLE_METRICS:
        header += [f"{m}_seed{s}" for s in table.seeds]
    w.writerow(header)
    for i in range(len(table.optimizer)):
        line: list[Any] = [table.optimizer[i], table.cell[i], table.model[i], len(table.seeds),
                           "" if table.baseline_row[i] < 0 else _row_name(table, table.baseline_row[i])]
        for m in metrics:
            line += [_csv_num(table.stats[m][s][i]) for s in CSV_STATS if s in table.stats[m]]
        for m in TABLE_METRICS:
            line += [_csv_num(v) for v in table.values[m][i]]
        w.writerow(line)
    return buf.getvalue()


def _csv_num(v: Any) -> str:
    v = float(v)
    return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def write_csv(table: Table, path: Path) -> Path:
    atomic_write_text(path, csv_text(table))
    return path

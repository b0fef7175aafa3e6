"""What the commands share: consoles, option parsing, progress bars, result summaries.

Imported by every command module; it imports none of them.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from cli.options import Evaluation, ModelAndData, Runtime
from landscape.errors import UserError

# Every string printed may hold user text (paths, option values, names from files): rich
# must never read it as markup ("[/bold]", "[v2]") or emoji codes (":-1:", ":smile:"), nor
# break a long path across lines. Style comes from Text objects (`bold`, `say`), never from
# markup in strings.
console = Console(markup=False, emoji=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)


def bold(text: Any) -> Text:
    return Text(str(text), style="bold")


def say(*parts: str | Text, to: Console | None = None) -> None:
    """One line from plain strings (printed literally) and styled :class:`Text` pieces."""
    (to or console).print(Text.assemble(*parts))


def error_line(message: str) -> Text:
    """``error: MESSAGE`` with MESSAGE literal, on one line (newlines in it become spaces)."""
    return Text.assemble(("error:", "bold red"), " ", " ".join(str(message).split()))


def print_json(obj: Any) -> None:
    """``obj`` as JSON on stdout. NaN and inf (a diverged run) are not JSON: they are written as
    null, and a note on stderr says how many were."""
    count = [0]

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            count[0] += 1
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    text = json.dumps(clean(obj), indent=2, allow_nan=False, default=str)
    print(text)
    if count[0]:
        err_console.print(f"note: {count[0]} value(s) were NaN or inf (diverged) and are written as null")


# What an interruption (Ctrl-C) leaves behind, said by the command that is running.
_interrupt_notes: list[Callable[[], str]] = []


def on_interrupt(note: Callable[[], str]) -> None:
    """Register the one line to print if the command is interrupted (the latest one wins)."""
    _interrupt_notes.append(note)


def interrupt_message() -> str:
    for note in reversed(_interrupt_notes):
        try:
            return note()
        except Exception:  # a note must never turn Ctrl-C into a traceback
            continue
    return "interrupted; nothing was written"


def analysis_interrupted() -> str:
    """What an interrupted analysis kept: the points in its .partial file, and how to go on."""
    from landscape.store import unfinished

    kept = unfinished()
    if not kept:
        return "interrupted before any result was written; nothing was kept"
    partial, done, total = kept[-1]
    return (f"interrupted; {done} of {total} points are kept in {partial}: run the same command again to "
            "continue from there")


def parse_options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse as JSON (numbers, lists), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r}: expected key=value")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def apply_runtime(runtime: Runtime) -> None:
    """Set the thread count before any work: --threads, else as many as the machine has idle
    cores (landscape.device.default_threads), so a shared machine is not oversubscribed."""
    import torch

    from landscape.device import default_threads

    if runtime.threads is not None and runtime.threads < 1:
        raise UserError(f"--threads must be >= 1, got {runtime.threads}")
    torch.set_num_threads(runtime.threads or default_threads())


def threads_note() -> str:
    import torch

    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''} (--threads)"


def command_line() -> str:
    return " ".join(["landscape", *sys.argv[1:]])


def analysis_options(source: ModelAndData, evaluation: Evaluation, runtime: Runtime,
                     progress: Callable[[int, int], None] | None = None) -> Any:
    """The library's AnalysisOptions from the command's option groups."""
    from landscape.analyses import AnalysisOptions

    apply_runtime(runtime)
    return AnalysisOptions(
        splits=tuple(s.strip() for s in evaluation.split.split(",") if s.strip()), subset=evaluation.subset,
        bn=evaluation.bn, bn_samples=evaluation.bn_samples, bn_batch=evaluation.bn_batch, device=runtime.device, batch_size=evaluation.batch_size, seed=evaluation.seed,
        data_dir=str(source.data_dir) if source.data_dir else None, command=command_line(),
        overwrite=evaluation.force, progress=progress, bf16=evaluation.bf16,
        model=source.model, model_options=parse_options(source.model_option, "--model-option"),
        dataset=source.dataset, data_options=parse_options(source.data_option, "--data-option"),
        state_key=source.state_key)


class _Bar:
    """A rich progress bar on a terminal; elsewhere (a pipe, a log file, CI) a plain line every
    LOG_SECONDS, so long work is never silent."""

    LOG_SECONDS = 10.0

    def __init__(self, console: Console, *columns: Any):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(*columns, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not self.live)
        self.started = time.monotonic()
        self.logged = self.started
        self.origins: dict[str, tuple[float, float]] = {}
        self.last_fraction: dict[str, float] = {}

    def __enter__(self) -> "_Bar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, what: str, done: int, total: int, force: bool = False, note: str = "", key: str = "") -> None:
        """The plain line: ``what done/total[, note], elapsed, about N s left``.

        The rate is measured per ``key`` (an optimizer, an analysis) from the first time it was
        seen, so work that started later (the next optimizer, a resumed run) gets its own estimate.
        """
        now = time.monotonic()
        fraction = done / total if total else 1.0
        key = key or what
        since, start_fraction = self.origins.setdefault(key, (now, fraction))
        if fraction < self.last_fraction.get(key, 0.0):  # started over: the next seed, the next analysis
            since, start_fraction = self.origins[key] = (now, fraction)
        self.last_fraction[key] = fraction
        if self.live or (not force and now - self.logged < self.LOG_SECONDS):
            return
        self.logged = now
        rate = (fraction - start_fraction) / (now - since) if now > since else 0.0
        left = f", about {(1 - fraction) / rate:.0f} s left" if rate > 0 and fraction < 1 else ""
        self.console.print(f"{what} {done}/{total}{note}, {now - self.started:.0f} s{left}",
                           markup=False, highlight=False)


class TrainProgress(_Bar):
    """Training progress fed by the trainer's events: one bar per optimizer over its steps."""

    def __init__(self, console: Console):
        super().__init__(console, TextColumn("{task.fields[optimizer]:>9}"),
                         TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}  loss {task.fields[loss]}  "
                                    "lr {task.fields[lr]}"))
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        name = event["optimizer"]
        if "epoch_done" in event:
            m = event.get("metrics", {})
            acc = f", test acc {100 * m['test_acc']:.2f}%" if isinstance(m.get("test_acc"), float) else ""
            self.log(f"{name}: epoch", event["epoch_done"], event["epochs"], force=True, note=acc, key=name)
            return
        if "batch" not in event:
            return
        done = (event["epoch"] - 1) * event["batches"] + event["batch"]
        total = event["epochs"] * event["batches"]
        self.log(f"{name}: step", done, total, key=name)
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task("", total=total, optimizer=name, epoch=0,
                                                      epochs=event["epochs"], loss="-", lr="-")
        fields = {"epoch": event["epoch"]}
        if event["batch"] % 10 == 0 or event["batch"] == event["batches"]:
            fields.update(loss=f"{float(event['loss']):.4f}", lr=f"{event['lr']:.4g}")
        self.progress.update(self.tasks[name], completed=done, total=total, **fields)


class PointProgress(_Bar):
    """Progress over evaluated points (or another unit: Lanczos steps, probes)."""

    def __init__(self, label: str, console: Console, unit: str = "points"):
        super().__init__(console, TextColumn(label.replace("[", "\\["), style="bold"), TextColumn(unit))
        self.label, self.unit, self.task = label, unit, None

    def __call__(self, done: int, total: int) -> None:
        self.log(f"{self.label}: {self.unit}", done, total, force=done >= total)
        if self.task is None:
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, completed=done, total=total)


def training_table(results: list[Any], title: str) -> Table:
    """Final metrics of each optimizer of a training run."""
    table = Table(title=title, caption=threads_note())
    # Two-line headers: the table fits an 80-column terminal.
    for column in ("optimizer", "epochs", "train\nloss", "test\nloss", "test\nacc", "averaged\ntest loss",
                   "averaged\ntest acc"):
        table.add_column(column, justify="left" if column == "optimizer" else "right", no_wrap=True)
    for r in results:
        m = r.final

        def fmt(key: str, pct: bool = False) -> str:
            if key not in m:
                return "-"
            return f"{100 * m[key]:.2f}%" if pct else f"{m[key]:.4f}"

        table.add_row(r.name, str(m.get("epoch", "-")), fmt("train_loss"), fmt("test_loss"),
                      fmt("test_acc", True), fmt("averaged_test_loss"), fmt("averaged_test_acc", True))
    return table


def result_summary(path: Path) -> dict[str, Any]:
    import numpy as np

    from landscape.store import load_result

    result = load_result(path)
    summary: dict[str, Any] = {"file": str(path), "analysis": result.attrs.get("analysis"),
                               "points": int(np.prod(result.done.shape)), "splits": {}}
    import torch

    summary["threads"] = torch.get_num_threads()
    for split, metrics in result.metrics.items():
        loss, acc = metrics["loss"], metrics["accuracy"]
        finite = np.isfinite(loss)
        summary["splits"][split] = {
            "min_loss": float(loss[finite].min()) if finite.any() else None,
            "max_loss": float(loss[finite].max()) if finite.any() else None,
            "max_accuracy": float(np.nanmax(acc)) if np.isfinite(acc).any() else None,
            "diverged_points": int((~finite).sum()),
        }
    return summary


def report_result(path: Path, as_json: bool) -> None:
    summary = result_summary(path)
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"landscape {summary['analysis']} -> {path}", caption=threads_note())
    for column in ("split", "points", "min loss", "max loss", "best acc", "diverged (NaN/inf)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, s in summary["splits"].items():
        fmt = lambda v, pct=False: "-" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")
        table.add_row(split, str(summary["points"]), fmt(s["min_loss"]), fmt(s["max_loss"]),
                      fmt(s["max_accuracy"], True), str(s["diverged_points"]))
    console.print(table)
    say("result: ", bold(path), f"  (draw it with: landscape plot {shlex.quote(str(path))})")


def run_analysis(label: str, source: ModelAndData, evaluation: Evaluation, runtime: Runtime,
                 run: Callable[[Any], Path]) -> None:
    """Run one analysis with a progress bar, then print its summary (a table, or JSON with --json)."""
    display = err_console if evaluation.as_json else console
    on_interrupt(analysis_interrupted)
    with PointProgress(label, display) as progress:
        path = run(analysis_options(source, evaluation, runtime, progress))
    report_result(Path(path), evaluation.as_json)


def open_in_browser(path: Path) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        err_console.print(f"no browser here; open {path} yourself")

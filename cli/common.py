"""What the commands share: consoles, option parsing, progress bars, result summaries.

Imported by every command module; it imports none of them.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    """Set the thread count before any work (torch reads it once per operation)."""
    if runtime.threads is not None:
        if runtime.threads < 1:
            raise UserError(f"--threads must be >= 1, got {runtime.threads}")
        import torch

        torch.set_num_threads(runtime.threads)


def command_line() -> str:
    return " ".join(["landscape", *sys.argv[1:]])


def analysis_options(source: ModelAndData, evaluation: Evaluation, runtime: Runtime,
                     progress: Callable[[int, int], None] | None = None) -> Any:
    """The library's AnalysisOptions from the command's option groups."""
    from landscape.analyses import AnalysisOptions

    apply_runtime(runtime)
    return AnalysisOptions(
        splits=tuple(s.strip() for s in evaluation.split.split(",") if s.strip()), subset=evaluation.subset,
        bn=evaluation.bn, device=runtime.device, batch_size=evaluation.batch_size, seed=evaluation.seed,
        data_dir=str(source.data_dir) if source.data_dir else None, command=command_line(),
        overwrite=evaluation.force, progress=progress, bf16=evaluation.bf16,
        model=source.model, model_options=parse_options(source.model_option, "--model-option"),
        dataset=source.dataset, data_options=parse_options(source.data_option, "--data-option"),
        state_key=source.state_key)


class TrainProgress:
    """A rich progress bar fed by the trainer's hook; invisible when stdout is not a TTY."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.fields[optimizer]:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}  loss {task.fields[loss]}  lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        if self.progress.disable:
            return
        name = event["optimizer"]
        if name not in self.tasks:
            total = event["epochs"] * event.get("batches", 1)
            self.tasks[name] = self.progress.add_task("", total=total, optimizer=name, epoch=0,
                                                      epochs=event["epochs"], loss="-", lr="-")
        task = self.tasks[name]
        if "batch" in event:
            done = (event["epoch"] - 1) * event["batches"] + event["batch"]
            fields = {"epoch": event["epoch"]}
            if event["batch"] % 10 == 0 or event["batch"] == event["batches"]:
                fields.update(loss=f"{event['loss'].item():.4f}", lr=f"{event['lr']:.4g}")
            self.progress.update(task, completed=done, **fields)


class PointProgress:
    """A rich progress bar over evaluated points; invisible when stdout is not a TTY."""

    def __init__(self, label: str, console: Console):
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("points"), TimeElapsedColumn(), console=console,
                                 disable=not console.is_terminal)
        self.task = None

    def __enter__(self) -> "PointProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, completed=done, total=total)


def training_table(results: list[Any], title: str) -> Table:
    """Final metrics of each optimizer of a training run."""
    table = Table(title=title)
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
    table = Table(title=f"landscape {summary['analysis']} -> {path}")
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

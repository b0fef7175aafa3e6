"""Rendering: `landscape plot`, `landscape report` and `landscape demo` (the whole chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cli.common import PointProgress, TrainProgress, apply_runtime, bold, console, err_console, on_interrupt, \
    open_in_browser, print_json, say, training_table
from cli.options import Runtime, grouped

Open = Annotated[bool, typer.Option("--open", help="Open it in the default browser")]


def register(app: typer.Typer) -> None:
    app.command(epilog=(
        "Examples:\n\n  landscape plot line.h5\n\n  landscape plot runs/x/sgd/trajectory.h5 -o traj.html --open\n\n"
        "  landscape plot surface.h5 --png surface.png   (needs kaleido and a Chrome)"))(plot)
    app.command(epilog=(
        "Examples:\n\n  landscape report runs/x\n\n  landscape report runs/x -o talk.html --open\n\n"
        "  landscape report results/   (a folder of result files, no run needed)"))(report)
    app.command(epilog=(
        "Examples:\n\n  landscape demo\n\n  landscape demo --out runs/demo --report report.html --open"))(demo)


def plot(
    result: Annotated[Path, typer.Argument(help="A result file (.h5) of any analysis")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default: beside the result)")] = None,
    open_: Open = False,
    png: Annotated[Optional[Path], typer.Option(help="Also export a static PNG through kaleido")] = None,
) -> None:
    """Draw any result file as a self-contained interactive HTML page."""
    from landscape import plots

    path = plots.plot_result(result, out)
    if png:
        plots.save_png(plots.figure(result), png)
        say("png: ", bold(png))
    say("plot: ", bold(path))
    if open_:
        open_in_browser(path)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape train, or any folder of "
                                                 "result files (.h5)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default: DIR/report.html)")] = None,
    open_: Open = False,
) -> None:
    """One page for a run or a folder: metrics of every optimizer, a summary table and every result file in it."""
    from landscape import plots

    path = plots.report(run_dir, out)
    say("report: ", bold(path))
    if open_:
        open_in_browser(path)


@grouped
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory")] = Path("runs/demo"),
    report_path: Annotated[Path, typer.Option("--report", help="Where the HTML report goes")] = Path("report.html"),
    epochs: Annotated[Optional[int], typer.Option(
        help="Training epochs (default: the demo's setting, 30; SWA averages from the epoch after the first "
             "LR phase)", show_default=False)] = None,
    runtime: Runtime = Runtime(),
    open_: Open = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of tables")] = False,
) -> None:
    """The whole chain on the embedded default: train sgd and swa, analyse, write report.html."""
    from landscape.demo import run_demo

    apply_runtime(runtime)
    display = err_console if as_json else console
    on_interrupt(lambda: f"interrupted; what is finished is kept in {out}: run the same command again to continue")
    with TrainProgress(display) as progress, PointProgress("analyses", display) as points:
        summary = run_demo(out, report_path, device=runtime.device, train_progress=progress,
                           point_progress=points, **({"epochs": epochs} if epochs is not None else {}))
    if as_json:
        print_json({
            "training": {r.name: {"directory": str(r.directory), **r.final} for r in summary.training},
            "analyses": [{"analysis": name, "file": str(path), "seconds": seconds}
                         for name, path, seconds in summary.analyses],
            "report": str(summary.report)})
    else:
        print_demo_summary(summary)
    if open_:
        open_in_browser(summary.report)


def print_demo_summary(summary: Any) -> None:
    console.print(training_table(summary.training, "landscape demo: training"))
    table = Table(title="landscape demo: analyses")
    for column in ("analysis", "file", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for name, path, seconds in summary.analyses:
        table.add_row(name, str(path), f"{seconds:.1f}")
    console.print(table)
    say("report: ", bold(summary.report))

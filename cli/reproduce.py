"""`landscape reproduce`: the papers' claims measured on the embedded data, each with a verdict.

Thin: parses, asks :mod:`landscape.reproduce` for the plan and its predicted time, prints it,
runs, and prints the verdict table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from cli.common import PointProgress, TrainProgress, apply_runtime, command_line, console, err_console
from cli.options import Runtime, grouped

EPILOG = (
    "Claims: asgd (Nitanda et al. 2024), phase (Kobayashi), swa (Izmailov et al. 2018), sam (Foret et al., "
    "Kwon et al.), stability (the SGD stability lecture), or all.\n\n"
    "Examples:\n\n"
    "  landscape reproduce all --threads 1   (every claim; prints the expected time first)\n\n"
    "  landscape reproduce swa sam --out runs/claims\n\n"
    "  landscape reproduce all --budget 1800   (fewer seeds, then shorter training, to fit 30 minutes)\n\n"
    "  landscape reproduce all --plan   (the settings and the predicted time, nothing trained)\n\n"
    "  landscape reproduce stability --quick   (a one-minute smoke run of the machinery)\n\n"
    "Killed? Run the same command again: finished training and analyses are kept."
)


def register(app: typer.Typer) -> None:
    app.command(name="reproduce", epilog=EPILOG)(reproduce)


@grouped
def reproduce(
    claims: Annotated[Optional[list[str]], typer.Argument(
        help="Claims to test: asgd, phase, swa, sam, stability, or all", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory: one compare per setting, "
                                                          "claims.json, claims.csv, report.html")] =
    Path("runs/reproduce"),
    budget: Annotated[Optional[float], typer.Option(
        help="Seconds to fit: fewer seeds (down to 3), then shorter training (down to half), until the "
             "predicted time fits; says what it chose")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per setting (default 5)")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Smoke run: tiny data, models and epochs, 2 seeds; checks the machinery, its verdicts "
                        "mean nothing")] = False,
    plan_only: Annotated[bool, typer.Option("--plan", help="Print the settings and the predicted time, then stop")] =
    False,
    runtime: Runtime = Runtime(),
    force: Annotated[bool, typer.Option("--force", help="Delete this directory's runs and results and start over")] =
    False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON")] = False,
) -> None:
    """Test the papers' claims on the embedded MNIST-1D: train every setting over seeds, compare with paired
    95% CIs, measure flatness, and write a report whose first lines are the verdicts (reproduced, not
    reproduced, inconclusive) beside the published numbers."""
    import time

    from landscape import reproduce as rp

    started = time.perf_counter()
    apply_runtime(runtime)
    display = err_console if as_json else console
    plan = rp.plan_for(claims or ["all"], out, seeds=seeds, budget=budget, quick=quick, device=runtime.device)
    display.print(plan_table(plan))
    if plan.budget:
        b = plan.budget
        how = "as chosen before for this directory" if b.get("reused") else b["rule"]
        display.print(Text.assemble(f"--budget {b['seconds']:g} s: ", (f"{b['seeds']} seeds", "bold"),
                                    f", epochs x {b['epoch_scale']:g} ({how})"))
    display.print(Text.assemble("expected run time here: ", (f"about {_minutes(plan.predicted_seconds)}", "bold"),
                                f" (from {len(plan.timing['models'])} timed model(s); the machine's current load "
                                "included)"))
    if plan_only:
        if as_json:
            print(json.dumps({"plan": plan.record()}, indent=2))
        return

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "setting":
            display.print(Text.assemble((f"setting {event['index']}/{event['total']}: {event['setting']}", "bold"),
                                        f" ({event['seeds']} seeds, {event['epochs']} epochs, about "
                                        f"{_minutes(event['predicted_seconds'])})"))
        elif kind == "compare" and event["compare_event"] in ("run", "skip"):
            run = event["run"]
            where = f"seed {run.seed}" + (f" {run.cell}" if run.cell else "")
            what = "done, kept" if event["compare_event"] == "skip" else (
                "continuing" if event.get("state") == "partial" else "training")
            display.print(f"  [{event['index']}/{event['total']}] {where}: {', '.join(run.optimizers)} ({what})")
        elif kind == "flatness":
            display.print(f"  flatness, seed {event['seed']}: {event['analysis']}")
        elif kind == "stability":
            display.print(f"  stability, seed {event['seed']}: λ_max at the end of LR phase {event['phase']} "
                          f"(epoch {event['epoch']})")

    with TrainProgress(display) as progress, PointProgress("analysis", display) as points:
        result = rp.reproduce(plan, budget=budget, seeds=seeds, force=force, command=command_line(),
                              progress=progress, point_progress=points, on_event=on_event, started=started)
    if as_json:
        print(json.dumps({"out": str(out), "report": str(result.report), "json": str(result.json),
                          "csv": str(result.csv), "seconds": round(result.seconds, 1),
                          "total_seconds": result.total_seconds, "rule": rp.RULE, "claims": result.claims,
                          "effects": result.effects}, indent=2))
        return
    console.print(verdict_table(result))
    console.print(f"rule: {rp.RULE}")
    console.print(f"wall time: {_minutes(result.seconds)} this run, {_minutes(result.total_seconds)} in all; "
                  f"report: {result.report}, {result.json}, {result.csv}")


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def plan_table(plan: Any) -> Table:
    t = Table(title=f"landscape reproduce {' '.join(plan.claims)} -> {plan.out}"
                    + ("  (--quick: smoke run)" if plan.quick else ""))
    for c in ("setting", "optimizers", "seeds", "epochs", "what", "predicted"):
        t.add_column(c, justify="right" if c in ("seeds", "epochs", "predicted") else "left")
    for p in plan.settings:
        s = p.setting
        t.add_row(s.name, ", ".join(s.optimizers), str(p.seeds),
                  str(p.config.epochs), s.title, _minutes(p.predicted_seconds))
    return t


def verdict_table(result: Any) -> Table:
    from landscape.reproduce import fmt_effect

    t = Table(title=f"The papers' claims, measured ({result.plan.seeds} seeds)")
    for c in ("claim", "effect", "mean [95% CI]", "published", "verdict"):
        t.add_column(c, justify="right" if c == "mean [95% CI]" else "left", overflow="fold")
    style = {"reproduced": "green", "not reproduced": "red"}
    for row in result.effects:
        v = row["verdict"]
        t.add_row(row["claim"], f"{row['measures']} ({row['claimed']} 0)", fmt_effect(row), row["published"],
                  Text(v, style=style.get(v, "yellow")))
    return t

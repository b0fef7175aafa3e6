"""`landscape compare`: every optimizer x every seed (x one swept setting) -> a table with error bars.

Thin: parses, calls :func:`landscape.compare.compare`, prints. Its training options are
`landscape train`'s (the same option groups, cli/options.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cli.common import TrainProgress, apply_runtime, command_line, console, err_console
from cli.options import ModelAndData, Runtime, Training, grouped
from cli.train import train_config

DEFAULT_OPTIMIZERS = ["sgd", "asgd", "phase", "sam", "asam"]
DEFAULT_SEEDS = 5
DEFAULT_EPOCHS = 12
DEFAULT_NUM_TEST = 10_000  # MNIST-1D test split: a 0.3-point gap is about 1.5 standard errors of one model

EPILOG = (
    "Examples:\n\n"
    "  landscape compare   (sgd, asgd, phase, sam, asam x 5 seeds on MNIST-1D, 10k test samples)\n\n"
    "  landscape compare --optimizer sgd --optimizer swa --seeds 3 --epochs 20 --out runs/swa\n\n"
    "  landscape compare --optimizer sgd --optimizer asgd --optimizer sam --sweep lr=0.05,0.1,0.2 --out runs/lr\n\n"
    "  landscape compare --optimizer sgd --optimizer phase --sweep gamma0=0.5,0.8,0.9,0.95,0.99\n\n"
    "  landscape compare --optimizer sgd --optimizer sam --budget 300   (epochs chosen to fit 5 minutes)\n\n"
    "Run the same command again after an interruption: finished runs are kept, unfinished ones continue."
)


def register(app: typer.Typer) -> None:
    app.command(name="compare", epilog=EPILOG)(compare)


@grouped
def compare(
    optimizer: Annotated[Optional[list[str]], typer.Option(
        "--optimizer", "-O", help="sgd, asgd, swa, phase, sam, asam, lookahead; repeat. Default: sgd asgd phase "
                                  "sam asam, or sgd and the --preset's optimizer", show_default=False)] = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds (seed, seed+1, ...); each seed is one initialization shared by every optimizer")] = DEFAULT_SEEDS,
    seed: Annotated[int, typer.Option(help="First seed")] = 0,
    sweep: Annotated[Optional[str], typer.Option(help="One setting over values, e.g. lr=0.05,0.1,0.2, rho=0.02,0.05,0.1 or gamma0=0.8,0.9,0.95; only the optimizers it changes are retrained per value")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Optimizer the paired differences are taken to (default: sgd when given)")] = None,
    budget: Annotated[Optional[float], typer.Option(help="Seconds for all training: times 2 epochs of every optimizer, then picks the most epochs that fit (instead of --epochs)")] = None,
    sharpness: Annotated[bool, typer.Option("--sharpness", help="Add the top Hessian eigenvalue of every model (train split, fixed subset; a few seconds per checkpoint)")] = False,
    sharpness_subset: Annotated[int, typer.Option(help="Training samples for --sharpness (0: the whole split)")] = 1024,
    out: Annotated[Path, typer.Option("--out", "-o", help="Compare directory: OUT/seed_<s>/..., compare.h5, compare.csv")] = Path("runs/compare"),
    epochs: Annotated[Optional[int], typer.Option(help=f"Training epochs per run (default {DEFAULT_EPOCHS})")] = None,
    source: ModelAndData = ModelAndData(),
    training: Training = Training(),
    runtime: Runtime = Runtime(),
    force: Annotated[bool, typer.Option("--force", help="Delete this compare's runs and results in --out and start over")] = False,
    resume: Annotated[bool, typer.Option("--resume", hidden=True, help="Accepted for symmetry with train; resuming is automatic")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON")] = False,
) -> None:
    """Train every optimizer for every seed from a shared initialization; table of final test accuracy/loss
    (last iterate and averaged model), mean ± std over seeds, paired difference to sgd with a 95% CI.
    On mnist1d the test split defaults to num_test=10000 here: a 0.3-point gap needs that many samples."""
    from landscape import compare as cmp
    from landscape.errors import UserError

    if budget is not None and epochs is not None:
        raise UserError("give --epochs or --budget, not both (--budget chooses the epochs)")
    apply_runtime(runtime)
    mnist1d = (source.dataset or "mnist1d").lower().replace("-", "") == "mnist1d"
    if optimizer is None and training.preset is None:
        optimizer = list(DEFAULT_OPTIMIZERS)
    cfg = train_config(optimizer, epochs or DEFAULT_EPOCHS, seed, source, training, runtime,
                       data_defaults={"num_test": DEFAULT_NUM_TEST} if mnist1d else None)
    display = err_console if as_json else console

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "probe":
            display.print(f"--budget: timing {event['epochs']} epochs of {', '.join(event['optimizers'])}")
        elif kind == "budget":
            how = "as chosen before" if event.get("reused") else f"predicted {event['predicted_seconds']:.0f} s"
            display.print(f"--budget {event['seconds']:g} s: [bold]{event['epochs']} epochs[/bold] per run ({how})")
        elif kind == "sharpness":
            display.print(f"[{event['index']}/{event['total']}] sharpness of {event['checkpoint']}")
        elif kind in ("run", "skip"):
            run = event["run"]
            where = f"seed {run.seed}" + (f" {run.cell}" if run.cell else "")
            what = ("done, kept" if kind == "skip" else
                    "continuing" if event.get("state") == "partial" else "training")
            display.print(f"[{event['index']}/{event['total']}] {where}: {', '.join(run.optimizers)} ({what})")

    command = command_line()
    with TrainProgress(display) as progress:
        result = cmp.compare(cfg, out, seeds=seeds, first_seed=seed, sweep=sweep, baseline=baseline,
                             budget=budget, sharpness=sharpness, sharpness_subset=sharpness_subset or None,
                             force=force, command=command, progress=progress, on_event=on_event)
    table = result.table
    if as_json:
        print(json.dumps({
            "out": str(out), "h5": str(result.h5), "csv": str(result.csv), "epochs": table.epochs,
            "seeds": table.seeds, "baseline": table.baseline, "sweep": table.sweep_key,
            "std": cmp.STD_METHOD, "ci": cmp.CI_METHOD, "budget": result.budget,
            "trained": [str(r.directory) for r in result.trained],
            "skipped": [str(r.directory) for r in result.skipped],
            "rows": table.to_records(),
        }, indent=2))
        return
    console.print(rich_table(table, f"landscape compare -> {out}"))
    console.print(caption(table))
    console.print(f"results: [bold]{result.h5}[/bold], [bold]{result.csv}[/bold]  (page: landscape report {out})")


def _pm(mean: float, std: float, scale: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "nan"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" if math.isfinite(std) else f"{scale * mean:.{digits}f}"


def _ci(stats: dict, i: int, scale: float, digits: int) -> str:
    m, lo, hi = (float(stats[k][i]) for k in ("diff_mean", "diff_ci_low", "diff_ci_high"))
    if not math.isfinite(m):
        return "-"
    if not math.isfinite(lo):
        return f"{scale * m:+.{digits}f}"
    return f"{scale * m:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def rich_table(table: Any, title: str) -> Table:
    t = Table(title=title)
    has_sweep = any(table.cell)
    columns = ["optimizer"] + (["sweep"] if has_sweep else []) + ["model", "test acc (%)"]
    base = table.baseline
    if base:
        columns.append(f"Δ acc vs {base} (points) [95% CI]")
    columns.append("test loss")
    if base:
        columns.append(f"Δ loss vs {base} [95% CI]")
    if table.sharpness is not None:
        columns.append("top Hessian eig.")
    for c in columns:
        t.add_column(c, justify="left" if c in ("optimizer", "sweep", "model") else "right", no_wrap=True)
    acc, loss = table.stats["test_acc"], table.stats["test_loss"]
    for i in range(len(table.optimizer)):
        is_base = table.baseline_row[i] == i
        row = [table.optimizer[i]] + ([table.cell[i] or "-"] if has_sweep else [])
        row += [table.model[i], _pm(acc["mean"][i], acc["std"][i], 100, 2)]
        if base:
            row.append("(reference)" if is_base else "-" if table.baseline_row[i] < 0 else _ci(acc, i, 100, 2))
        row.append(_pm(loss["mean"][i], loss["std"][i], 1, 4))
        if base:
            row.append("(reference)" if is_base else "-" if table.baseline_row[i] < 0 else _ci(loss, i, 1, 4))
        if table.sharpness is not None:
            sh = table.stats["sharpness"]
            row.append(_pm(sh["mean"][i], sh["std"][i], 1, 3))
        t.add_row(*row)
    return t


def caption(table: Any) -> str:
    n = len(table.seeds)
    text = (f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, table.seeds))}), {table.epochs} epochs; "
            "mean ± sample std over seeds (ddof=1)")
    if table.baseline:
        text += (f"; Δ = paired difference to {table.baseline}'s last iterate within each seed (same initialization "
                 f"and batch order), 95% CI = mean ± t(0.975, {n - 1})·sd/√{n}")
    return text

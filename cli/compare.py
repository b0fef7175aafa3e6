"""`landscape compare`: every optimizer x every seed (x one swept setting) -> a table with error bars.

Thin: parses, calls :func:`landscape.compare.compare`, prints. Registered by cli/main.py
with ``compare.register(app)``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

# cli.main is imported inside the command, not here: cli/main.py imports this module to
# register the command, and a module-level import back would be circular.

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


def compare(
    optimizer: Annotated[Optional[list[str]], typer.Option("--optimizer", "-O", help="sgd, asgd, swa, phase, sam, asam, lookahead; repeat. Default: sgd asgd phase sam asam")] = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds (seed, seed+1, ...); each seed is one initialization shared by every optimizer")] = DEFAULT_SEEDS,
    seed: Annotated[int, typer.Option(help="First seed")] = 0,
    sweep: Annotated[Optional[str], typer.Option(help="One setting over values, e.g. lr=0.05,0.1,0.2, rho=0.02,0.05,0.1 or gamma0=0.8,0.9,0.95; only the optimizers it changes are retrained per value")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Optimizer the paired differences are taken to (default: sgd when given)")] = None,
    budget: Annotated[Optional[float], typer.Option(help="Seconds for all training: times 2 epochs of every optimizer, then picks the most epochs that fit (instead of --epochs)")] = None,
    sharpness: Annotated[bool, typer.Option("--sharpness", help="Add the top Hessian eigenvalue of every model (train split, fixed subset; a few seconds per checkpoint)")] = False,
    sharpness_subset: Annotated[int, typer.Option(help="Training samples for --sharpness (0: the whole split)")] = 1024,
    out: Annotated[Path, typer.Option("--out", "-o", help="Compare directory: OUT/seed_<s>/..., compare.h5, compare.csv")] = Path("runs/compare"),
    epochs: Annotated[Optional[int], typer.Option(help=f"Training epochs per run (default {DEFAULT_EPOCHS})")] = None,
    dataset: Annotated[str, typer.Option(help="mnist1d (embedded), cifar10, cifar100, svhn, mnist, fashion-mnist")] = "mnist1d",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where torchvision datasets live (not needed for mnist1d)")] = None,
    data_option: Annotated[Optional[list[str]], typer.Option(help=f"Dataset option key=value (mnist1d default here: num_test={DEFAULT_NUM_TEST})")] = None,
    model: Annotated[Optional[str], typer.Option(help="mlp, cnn1d, resnet20/32/56, wrn-D-K, vgg16-bn, preresnet-D or package.module:factory")] = None,
    model_option: Annotated[Optional[list[str]], typer.Option(help="Model option key=value, e.g. bn=true")] = None,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum")] = False,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay (coupled, as torch.optim.SGD)")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="phases (constant LR per phase), cosine or constant")] = "phases",
    phases: Annotated[Optional[str], typer.Option(help="epochs:lr per phase; default half, quarter, quarter at lr, lr/10, lr/100")] = None,
    average: Annotated[bool, typer.Option("--average", help="Also average sgd/sam/asam/lookahead (e.g. averaged SAM)")] = False,
    avg_start: Annotated[Optional[int], typer.Option(help="First epoch averaged by asgd/--average (default: epochs//2 + 1)")] = None,
    avg_every: Annotated[str, typer.Option(help="Average every 'epoch' or every 'step'")] = "epoch",
    swa_start: Annotated[Optional[int], typer.Option(help="First SWA epoch (default 75% of epochs)")] = None,
    swa_lr: Annotated[Optional[float], typer.Option(help="SWA learning rate (default lr/2)")] = None,
    swa_cycle: Annotated[int, typer.Option(help="0: constant SWA LR; c>0: cyclic over c epochs")] = 0,
    swa_lr_max: Annotated[Optional[float], typer.Option(help="Top of each SWA cycle (default lr)")] = None,
    gamma0: Annotated[float, typer.Option(help="Phase-wise base decay; gamma = gamma0^(80/T_p)")] = 0.9,
    phase_momentum: Annotated[str, typer.Option(help="At a phase start from the average: 'keep' or 'reset' momentum")] = "keep",
    rho: Annotated[Optional[float], typer.Option(help="SAM/ASAM radius (default 0.05 SAM, 0.5 ASAM)")] = None,
    asam_eta: Annotated[float, typer.Option(help="ASAM eta in T = |w| + eta")] = 0.01,
    asam_filterwise: Annotated[bool, typer.Option(help="ASAM with filter-wise T")] = False,
    lookahead_k: Annotated[int, typer.Option(help="Lookahead: fast steps per slow update")] = 5,
    lookahead_alpha: Annotated[float, typer.Option(help="Lookahead: slow step size")] = 0.5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice); 1 is often fastest for small models on a shared machine")] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete this compare's runs and results in --out and start over")] = False,
    resume: Annotated[bool, typer.Option("--resume", hidden=True, help="Accepted for symmetry with train; resuming is automatic")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON")] = False,
) -> None:
    """Train every optimizer for every seed from a shared initialization; table of final test accuracy/loss
    (last iterate and averaged model), mean ± std over seeds, paired difference to sgd with a 95% CI."""
    from cli.main import TrainProgress, console, err_console, parse_options
    from landscape import compare as cmp
    from landscape.errors import UserError
    from landscape.train import TrainConfig

    if budget is not None and epochs is not None:
        raise UserError("give --epochs or --budget, not both (--budget chooses the epochs)")
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    data_options = parse_options(data_option, "--data-option")
    if dataset.lower().replace("-", "") == "mnist1d":
        data_options.setdefault("num_test", DEFAULT_NUM_TEST)
    cfg = TrainConfig(
        optimizers=list(optimizer or DEFAULT_OPTIMIZERS), dataset=dataset, data_options=data_options,
        data_dir=str(data_dir) if data_dir else None, model=model,
        model_options=parse_options(model_option, "--model-option"), epochs=epochs or DEFAULT_EPOCHS,
        batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        schedule=schedule, phases=phases, average=average, avg_start=avg_start, avg_every=avg_every,
        swa_start=swa_start, swa_lr=swa_lr, swa_cycle=swa_cycle, swa_lr_max=swa_lr_max, gamma0=gamma0,
        phase_momentum=phase_momentum, rho=rho, asam_eta=asam_eta, asam_filterwise=asam_filterwise,
        lookahead_k=lookahead_k, lookahead_alpha=lookahead_alpha, seed=seed, device=device,
    )
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

    command = " ".join(["landscape", *sys.argv[1:]])
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

"""The `landscape` command line: parses, calls `landscape`, prints with rich.

No science lives here. A `UserError` from the library becomes one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from landscape.errors import UserError

app = typer.Typer(
    help="Train with flat-minima optimizers and measure the loss landscape around and between solutions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


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


def summary_table(results: list[Any], title: str) -> Table:
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


@app.command(
    epilog=(
        "Examples:\n\n"
        "  landscape train --optimizer sgd --optimizer swa --epochs 20 --out runs/x\n\n"
        "  landscape train --optimizer phase --phases 10:0.1,5:0.01,5:0.001 --out runs/phase\n\n"
        "  landscape train --dataset cifar10 --data-dir ~/data --model resnet20 --optimizer sam --rho 0.05 --out runs/c10\n\n"
        "  landscape train --optimizer sgd --save-every-steps 10 --out runs/steps   (mini-batch checkpoints)"
    )
)
def train(
    optimizer: Annotated[list[str], typer.Option("--optimizer", "-O", help="sgd, asgd, swa, phase, sam, asam, lookahead; repeat for several runs from one initialization")] = ["sgd"],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory")] = Path("runs/default"),
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 20,
    dataset: Annotated[str, typer.Option(help="mnist1d (embedded), cifar10, cifar100, svhn, mnist, fashion-mnist")] = "mnist1d",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where torchvision datasets live (not needed for mnist1d)")] = None,
    data_option: Annotated[Optional[list[str]], typer.Option(help="Dataset option key=value, e.g. num_test=10000")] = None,
    model: Annotated[Optional[str], typer.Option(help="mlp, cnn1d, resnet20/32/56, wrn-D-K, vgg16-bn, preresnet-D or package.module:factory; default cnn1d on mnist1d, resnet20 on images")] = None,
    model_option: Annotated[Optional[list[str]], typer.Option(help="Model option key=value, e.g. bn=true")] = None,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum")] = False,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay (coupled, as torch.optim.SGD)")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="phases (constant LR per phase), cosine or constant")] = "phases",
    phases: Annotated[Optional[str], typer.Option(help="epochs:lr per phase, e.g. 80:0.1,40:0.01,40:0.001; default half, quarter, quarter at lr, lr/10, lr/100")] = None,
    average: Annotated[bool, typer.Option("--average", help="Also keep a running average of the iterates (e.g. averaged SAM)")] = False,
    avg_start: Annotated[Optional[int], typer.Option(help="First epoch averaged by asgd/--average (default: epochs//2 + 1)")] = None,
    avg_every: Annotated[str, typer.Option(help="Average every 'epoch' or every 'step'")] = "epoch",
    swa_start: Annotated[Optional[int], typer.Option(help="First SWA epoch (default 75% of epochs)")] = None,
    swa_lr: Annotated[Optional[float], typer.Option(help="SWA learning rate (default lr/2)")] = None,
    swa_cycle: Annotated[int, typer.Option(help="0: constant SWA LR, average each epoch; c>0: cyclic LR over c epochs, average at cycle ends")] = 0,
    swa_lr_max: Annotated[Optional[float], typer.Option(help="Top of each SWA cycle (default lr)")] = None,
    gamma0: Annotated[float, typer.Option(help="Phase-wise base decay; gamma = gamma0^(80/T_p)")] = 0.9,
    phase_momentum: Annotated[str, typer.Option(help="At a phase start from the average: 'keep' or 'reset' the momentum buffer")] = "keep",
    rho: Annotated[Optional[float], typer.Option(help="SAM/ASAM radius (default 0.05 SAM, 0.5 ASAM)")] = None,
    asam_eta: Annotated[float, typer.Option(help="ASAM eta in T = |w| + eta")] = 0.01,
    asam_filterwise: Annotated[bool, typer.Option(help="ASAM with filter-wise T instead of element-wise")] = False,
    lookahead_k: Annotated[int, typer.Option(help="Lookahead: fast steps per slow update")] = 5,
    lookahead_alpha: Annotated[float, typer.Option(help="Lookahead: slow step size")] = 0.5,
    save_every_steps: Annotated[int, typer.Option(help="Also save a checkpoint every K mini-batch steps")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the initialization, data order and augmentation")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="2-D conv nets in channels_last memory format (faster on CPUs and tensor cores)")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Training forward passes under bfloat16 autocast (faster; changes the numerics; evaluation stays float32)")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run in --out")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON")] = False,
) -> None:
    """Train one or more optimizers from one initialization into a run directory."""
    from landscape.train import TrainConfig, train as run_training

    cfg = TrainConfig(
        optimizers=list(optimizer), dataset=dataset, data_options=parse_options(data_option, "--data-option"),
        data_dir=str(data_dir) if data_dir else None, model=model,
        model_options=parse_options(model_option, "--model-option"), epochs=epochs, batch_size=batch_size,
        lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, phases=phases,
        average=average, avg_start=avg_start, avg_every=avg_every, swa_start=swa_start, swa_lr=swa_lr,
        swa_cycle=swa_cycle, swa_lr_max=swa_lr_max, gamma0=gamma0, phase_momentum=phase_momentum, rho=rho,
        asam_eta=asam_eta, asam_filterwise=asam_filterwise, lookahead_k=lookahead_k,
        lookahead_alpha=lookahead_alpha, save_every_steps=save_every_steps, seed=seed, device=device,
        channels_last=channels_last, bf16=bf16,
    )
    display = err_console if as_json else console
    with TrainProgress(display) as progress:
        results = run_training(cfg, out, resume=resume, force=force, progress=progress)
    if as_json:
        print(json.dumps({r.name: {"directory": str(r.directory), **r.final} for r in results}, indent=2))
    else:
        console.print(summary_table(results, f"landscape train -> {out}"))
        console.print(f"run directory: [bold]{out}[/bold]")


# ---------------------------------------------------------------- analyses

Split = Annotated[str, typer.Option("--split", help="Splits to evaluate, comma-separated: train,test")]
Subset = Annotated[Optional[int], typer.Option(help="Evaluate a fixed seeded subset of N samples per split (default: whole split)")]
BN = Annotated[str, typer.Option("--bn", help="recompute: BatchNorm statistics recomputed at every point from the train split; keep: stored ones")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
BatchSize = Annotated[int, typer.Option(help="Evaluation batch size")]
Seed = Annotated[int, typer.Option(help="Seed of random directions and of --subset")]
DataDir = Annotated[Optional[Path], typer.Option(help="Where torchvision datasets live (not needed for mnist1d)")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing result made by a different command")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of a table")]
BF16 = Annotated[bool, typer.Option("--bf16", help="Forward passes under bfloat16 autocast: ~2x on CPUs with bf16 units and on GPUs, but other numbers (recorded in the file)")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Result file (.h5)")]
Norm = Annotated[str, typer.Option(help="Direction normalization: filter (Li et al.), layer or none (unit-norm, Euclidean)")]
Ignore = Annotated[str, typer.Option(help="biasbn: leave biases and BatchNorm parameters unperturbed; none: perturb them too")]


def analysis_options(split: str, subset, bn: str, device: str, batch_size: int, seed: int, data_dir, force: bool,
                     progress=None, bf16: bool = False):
    from landscape.analyses import AnalysisOptions

    return AnalysisOptions(splits=tuple(s.strip() for s in split.split(",") if s.strip()), subset=subset, bn=bn,
                           device=device, batch_size=batch_size, seed=seed,
                           data_dir=str(data_dir) if data_dir else None, command=" ".join(["landscape", *sys.argv[1:]]),
                           overwrite=force, progress=progress, bf16=bf16)


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
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"landscape {summary['analysis']} -> {path}")
    for column in ("split", "points", "min loss", "max loss", "best acc", "diverged (NaN/inf)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, s in summary["splits"].items():
        fmt = lambda v, pct=False: "-" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")
        table.add_row(split, str(summary["points"]), fmt(s["min_loss"]), fmt(s["max_loss"]),
                      fmt(s["max_accuracy"], True), str(s["diverged_points"]))
    console.print(table)
    console.print(f"result: [bold]{path}[/bold]  (draw it with: landscape plot {path})")


def run_analysis(label: str, as_json: bool, fn, **common) -> None:
    display = err_console if as_json else console
    with PointProgress(label, display) as progress:
        path = fn(analysis_options(progress=progress, **common))
    report_result(Path(path), as_json)


@app.command(epilog=(
    "Examples:\n\n"
    "  landscape interpolate runs/x/sgd/final.pt runs/x/swa/averaged.pt -o line.h5\n\n"
    "  landscape interpolate A.pt B.pt --range -1:2 --points 61 --split test --subset 2000"))
def interpolate(
    a: Annotated[Path, typer.Argument(help="Checkpoint at alpha = 0")],
    b: Annotated[Path, typer.Argument(help="Checkpoint at alpha = 1")],
    out: Out = None,
    range_: Annotated[str, typer.Option("--range", help="alpha range LO:HI")] = "-0.5:1.5",
    points: Annotated[int, typer.Option(help="Number of alphas")] = 41,
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Loss and accuracy along (1-a)A + aB (SWA Fig. 5)."""
    from landscape.analyses import interpolate as run, parse_range

    alphas = parse_range(f"{range_}:{points}" if range_.count(":") == 1 else range_, "--range")
    run_analysis("interpolate", as_json, lambda o: run(a, b, out or Path("interpolate.h5"), alphas, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


@app.command(epilog=(
    "Examples:\n\n"
    "  landscape rays runs/x/sgd/final.pt runs/x/swa/averaged.pt --rays 10 -o rays.h5\n\n"
    "  landscape rays A.pt --norm none --distance 0:20:41"))
def rays(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints; the same rays are used for all")],
    out: Out = None,
    n_rays: Annotated[int, typer.Option("--rays", help="Number of random rays")] = 10,
    distance: Annotated[str, typer.Option(help="Distances along each ray LO:HI:N")] = "0:1:21",
    norm: Norm = "filter", ignore: Ignore = "biasbn",
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Loss along random rays from each checkpoint (SWA Fig. 4)."""
    from landscape.analyses import parse_range, rays as run

    distances = parse_range(distance, "--distance")
    run_analysis("rays", as_json,
                 lambda o: run(checkpoints, out or Path("rays.h5"), distances, n_rays, norm, ignore, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


@app.command(epilog=(
    "Examples:\n\n"
    "  landscape surface runs/x/swa/averaged.pt --x -1:1:21 --y -1:1:21 -o surface.h5\n\n"
    "  landscape surface runs/x/sgd/checkpoints/epoch_0000.pt --through runs/x/sgd/final.pt runs/x/swa/averaged.pt"))
def surface(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint at the origin of the plane")],
    out: Out = None,
    x: Annotated[Optional[str], typer.Option("--x", help="x grid LO:HI:N (default -1:1:21, or around the models with --through)")] = None,
    y: Annotated[Optional[str], typer.Option("--y", help="y grid LO:HI:N")] = None,
    through: Annotated[Optional[tuple[Path, Path]], typer.Option(help="Two checkpoints A B: the plane through CHECKPOINT, A and B", show_default=False)] = None,
    grid: Annotated[int, typer.Option(help="Points per axis when --x/--y are not given")] = 21,
    norm: Norm = "filter", ignore: Ignore = "biasbn",
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Loss on a 2-D plane: random filter-normalized directions, or through three models."""
    from landscape.analyses import parse_range, surface as run

    xs = parse_range(x, "--x") if x else None
    ys = parse_range(y, "--y") if y else None
    run_analysis("surface", as_json,
                 lambda o: run(checkpoint, out or Path("surface.h5"), xs, ys, tuple(through) if through else None,
                               norm, ignore, grid, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


@app.command(epilog="Example:\n\n  landscape segments runs/x/sgd --epochs 1,5,10,15,20")
def segments(
    run_dir: Annotated[Path, typer.Argument(help="RUN/<optimizer>")],
    out: Out = None,
    epochs: Annotated[Optional[str], typer.Option(help="Anchor epochs, e.g. 1,20,40,60,80 (default: 5 evenly spaced)")] = None,
    points: Annotated[int, typer.Option(help="Points per segment")] = 21,
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Loss on the segments joining chosen epochs of a run (phase-wise Fig. 2)."""
    from landscape.analyses import parse_int_list, segments as run

    anchors = parse_int_list(epochs, "--epochs") if epochs else None
    run_analysis("segments", as_json, lambda o: run(run_dir, out or run_dir / "segments.h5", anchors, points, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


@app.command(epilog=(
    "Example:\n\n  landscape train --optimizer sgd --save-every-steps 4 --out runs/s\n\n"
    "  landscape twopoint runs/s/sgd --ref 10"))
def twopoint(
    run_dir: Annotated[Path, typer.Argument(help="RUN/<optimizer>")],
    out: Out = None,
    ref: Annotated[Optional[int], typer.Option(help="Reference epoch (default: the last)")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Largest interval in epochs (default: back to epoch 0)")] = None,
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Loss of (theta_ref + theta_ref-k)/2 over intervals k in steps and epochs (phase-wise Fig. 3)."""
    from landscape.analyses import twopoint as run

    run_analysis("twopoint", as_json, lambda o: run(run_dir, out or run_dir / "twopoint.h5", ref, max_epochs, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


@app.command(epilog=(
    "Examples:\n\n  landscape trajectory runs/x/sgd\n\n"
    "  landscape trajectory runs/x/sgd --layer fc --surface --grid 25"))
def trajectory(
    run_dir: Annotated[Path, typer.Argument(help="RUN/<optimizer>")],
    out: Out = None,
    layer: Annotated[Optional[str], typer.Option(help="PCA of one layer only (e.g. the last linear layer)")] = None,
    with_surface: Annotated[bool, typer.Option("--surface", help="Also the loss on the PCA plane around the final point")] = False,
    grid: Annotated[int, typer.Option(help="Points per axis of --surface")] = 21,
    center: Annotated[str, typer.Option(help="PCA centering: mean or last")] = "mean",
    split: Split = "train,test", subset: Subset = None, bn: BN = "recompute", device: Device = "auto",
    batch_size: BatchSize = 2048, seed: Seed = 0, bf16: BF16 = False, data_dir: DataDir = None, force: Force = False,
    as_json: AsJson = False,
) -> None:
    """PCA and time-delay coordinates of the per-epoch weights (phase-wise Fig. 1)."""
    from landscape.analyses import trajectory as run

    run_analysis("trajectory", as_json,
                 lambda o: run(run_dir, out or run_dir / "trajectory.h5", layer, with_surface, grid, center, o),
                 split=split, subset=subset, bn=bn, device=device, batch_size=batch_size, seed=seed,
                 data_dir=data_dir, force=force, bf16=bf16)


# ---------------------------------------------------------------- rendering


def open_in_browser(path: Path) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        err_console.print(f"no browser here; open {path} yourself")


@app.command(epilog=(
    "Examples:\n\n  landscape plot line.h5\n\n  landscape plot runs/x/sgd/trajectory.h5 -o traj.html --open\n\n"
    "  landscape plot surface.h5 --png surface.png   (needs kaleido and a Chrome)"))
def plot(
    result: Annotated[Path, typer.Argument(help="A result file (.h5) of any analysis")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default: beside the result)")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open it in the default browser")] = False,
    png: Annotated[Optional[Path], typer.Option(help="Also export a static PNG through kaleido")] = None,
) -> None:
    """Draw any result file as a self-contained interactive HTML page."""
    from landscape import plots

    path = plots.plot_result(result, out)
    if png:
        plots.save_png(plots.figure(result), png)
        console.print(f"png: [bold]{png}[/bold]")
    console.print(f"plot: [bold]{path}[/bold]")
    if open_:
        open_in_browser(path)


@app.command(epilog="Examples:\n\n  landscape report runs/x\n\n  landscape report runs/x -o talk.html --open")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by landscape train")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default: RUN/report.html)")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open it in the default browser")] = False,
) -> None:
    """One page for a run: metrics of every optimizer, a summary table and every result file in it."""
    from landscape import plots

    path = plots.report(run_dir, out)
    console.print(f"report: [bold]{path}[/bold]")
    if open_:
        open_in_browser(path)


@app.command(epilog="Examples:\n\n  landscape demo\n\n  landscape demo --out runs/demo --report report.html --open")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory")] = Path("runs/demo"),
    report_path: Annotated[Path, typer.Option("--report", help="Where the HTML report goes")] = Path("report.html"),
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 20,
    device: Device = "auto",
    open_: Annotated[bool, typer.Option("--open", help="Open the report in the default browser")] = False,
    as_json: AsJson = False,
) -> None:
    """The whole chain on the embedded default: train sgd and swa, analyse, write report.html."""
    from landscape.demo import run_demo

    display = err_console if as_json else console
    with TrainProgress(display) as progress, PointProgress("analyses", display) as points:
        summary = run_demo(out, report_path, epochs=epochs, device=device, train_progress=progress,
                           point_progress=points)
    if as_json:
        print(json.dumps({
            "training": {r.name: {"directory": str(r.directory), **r.final} for r in summary.training},
            "analyses": [{"analysis": name, "file": str(path), "seconds": seconds}
                         for name, path, seconds in summary.analyses],
            "report": str(summary.report)}, indent=2))
    else:
        print_demo_summary(summary)
    if open_:
        open_in_browser(summary.report)


def print_demo_summary(summary: Any) -> None:
    console.print(summary_table(summary.training, "landscape demo: training"))
    table = Table(title="landscape demo: analyses")
    for column in ("analysis", "file", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for name, path, seconds in summary.analyses:
        table.add_row(name, str(path), f"{seconds:.1f}")
    console.print(table)
    console.print(f"report: [bold]{summary.report}[/bold]")


# Commands kept in their own modules; they import the helpers above lazily.
from cli import compare as _compare, sharpness as _sharpness  # noqa: E402

_sharpness.register(app)
_compare.register(app)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be one line like ours
    except UserError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted; finished epochs are saved, rerun with --resume to continue")
        sys.exit(130)
    except Exception as exc:
        # A command-line usage error (click's ClickException, vendored by newer typer).
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `landscape CMD` alone: its help, as asked
            print(exc.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/bold red] {exc.format_message()}{where}", highlight=False,
                          soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

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
    for column in ("optimizer", "epochs", "train loss", "test loss", "test acc", "avg test loss", "avg test acc"):
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
    )
    display = err_console if as_json else console
    with TrainProgress(display) as progress:
        results = run_training(cfg, out, resume=resume, force=force, progress=progress)
    if as_json:
        print(json.dumps({r.name: {"directory": str(r.directory), **r.final} for r in results}, indent=2))
    else:
        console.print(summary_table(results, f"landscape train -> {out}"))
        console.print(f"run directory: [bold]{out}[/bold]")


@app.command(epilog="Example:\n\n  landscape demo --out runs/demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 20,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """The whole chain on the embedded default: train sgd and swa on MNIST-1D from one initialization."""
    from landscape.train import TrainConfig, train as run_training

    cfg = TrainConfig(optimizers=["sgd", "swa"], epochs=epochs, device=device)
    with TrainProgress(console) as progress:
        results = run_training(cfg, out, force=True, progress=progress)
    console.print(summary_table(results, "landscape demo"))
    console.print(f"run directory: [bold]{out}[/bold]  (sgd/final.pt, swa/averaged.pt, metrics.jsonl)")


def main() -> None:
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished epochs are saved, rerun with --resume to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()

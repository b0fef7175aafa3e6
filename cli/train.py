"""`landscape train`: one or more optimizers from one initialization into a run directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.common import TrainProgress, apply_runtime, console, err_console, parse_options, training_table
from cli.options import ModelAndData, Runtime, Training, grouped

EPILOG = (
    "Examples:\n\n"
    "  landscape train --optimizer sgd --optimizer swa --epochs 20 --out runs/x\n\n"
    "  landscape train --optimizer phase --phases 10:0.1,5:0.01,5:0.001 --out runs/phase\n\n"
    "  landscape train --preset izmailov2018 --epochs 60 --out runs/swa   (the SWA paper's recipe)\n\n"
    "  landscape train --dataset cifar10 --data-dir ~/data --model resnet20 --optimizer sam --rho 0.05 --out runs/c10\n\n"
    "  landscape train --dataset mydata:splits --model mymodels:net --out runs/mine   (your own data and model)\n\n"
    "  landscape train --optimizer sgd --save-every-steps 10 --out runs/steps   (mini-batch checkpoints)"
)

Optimizers = Annotated[Optional[list[str]], typer.Option(
    "--optimizer", "-O", help="sgd, asgd, swa, phase, sam, asam, lookahead; repeat for several runs from one "
                              "initialization (default: sgd, or the --preset's optimizer)", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(train)


def train_config(optimizers: list[str] | None, epochs: int, seed: int, source: ModelAndData, training: Training,
                 runtime: Runtime, data_defaults: dict[str, Any] | None = None) -> Any:
    """The library's TrainConfig from the option groups (shared by train and compare)."""
    from landscape.train import TrainConfig

    if source.state_key is not None:
        from landscape.errors import UserError

        raise UserError("--state-key is for reading checkpoints; training writes its own")
    data_options = {**(data_defaults or {}), **parse_options(source.data_option, "--data-option")}
    return TrainConfig(
        optimizers=list(optimizers or []), dataset=source.dataset or "mnist1d", data_options=data_options,
        data_dir=str(source.data_dir) if source.data_dir else None, model=source.model,
        model_options=parse_options(source.model_option, "--model-option"), epochs=epochs, seed=seed,
        device=runtime.device, **dataclasses.asdict(training))


@grouped
def train(
    optimizer: Optimizers = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory")] = Path("runs/default"),
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 20,
    source: ModelAndData = ModelAndData(),
    training: Training = Training(),
    save_every_steps: Annotated[int, typer.Option(help="Also save a checkpoint every K mini-batch steps")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the initialization, data order and augmentation")] = 0,
    runtime: Runtime = Runtime(),
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run in --out")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON")] = False,
) -> None:
    """Train one or more optimizers from one initialization into a run directory."""
    from landscape.train import train as run_training

    apply_runtime(runtime)
    cfg = train_config(optimizer, epochs, seed, source, training, runtime)
    cfg.save_every_steps = save_every_steps
    display = err_console if as_json else console
    with TrainProgress(display) as progress:
        results = run_training(cfg, out, resume=resume, force=force, progress=progress)
    if as_json:
        print(json.dumps({r.name: {"directory": str(r.directory), **r.final} for r in results}, indent=2))
    else:
        console.print(training_table(results, f"landscape train -> {out}"))
        console.print(f"run directory: [bold]{out}[/bold]")

"""Options shared by several commands, each declared once.

A group is a dataclass whose fields are typer options. A command takes a group by
annotating one parameter with the class; :func:`grouped` puts the group's fields into the
signature typer reads (in that parameter's place) and hands the command one instance of
the group built from them::

    @app.command()
    @grouped
    def interpolate(a: ..., source: ModelAndData, evaluation: Evaluation) -> None:
        source.model, evaluation.split, ...

A command that needs another default subclasses the group and redefines the field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

# ---------------------------------------------------------------- groups


@dataclasses.dataclass
class ModelAndData:
    """What the checkpoints are weights of and what they are scored on (every command that loads them)."""

    model: Annotated[Optional[str], typer.Option(
        help="Model: a built-in name (mlp, cnn1d, resnet20/32/56, wrn-D-K, vgg16-bn, preresnet-D), "
             "torchvision:NAME (e.g. torchvision:resnet18) or your own package.module:factory. "
             "Default: what the checkpoint says")] = None
    model_option: Annotated[Optional[list[str]], typer.Option(
        help="Model option key=value (repeatable), e.g. num_classes=10 or bn=true")] = None
    dataset: Annotated[Optional[str], typer.Option(
        help="Data: mnist1d (embedded), cifar10, cifar100, svhn, mnist, fashion-mnist, or your own "
             "package.module:factory returning (train, test), each (x, y) tensors or a Dataset of "
             "(x, y). Default: what the checkpoint says")] = None
    data_option: Annotated[Optional[list[str]], typer.Option(
        help="Dataset option key=value (repeatable), e.g. num_test=10000; passed to your factory as keywords")] = None
    data_dir: Annotated[Optional[Path], typer.Option(
        help="Where torchvision datasets live (not needed for mnist1d or your own factory)")] = None
    state_key: Annotated[Optional[str], typer.Option(
        help="Key of the state_dict inside a checkpoint dict (default: state_dict, model, "
             "model_state_dict, net, ema, ... whichever holds tensors)")] = None


@dataclasses.dataclass
class Runtime:
    """Where and how fast: every command that computes."""

    device: Annotated[str, typer.Option(help="auto (cuda when available), cpu or cuda")] = "auto"
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads for torch (default: the physical cores not busy with other work right now, at "
             "least 1: more threads than idle cores make CPU work several times slower)")] = None


@dataclasses.dataclass
class Evaluation:
    """How points are scored (DESIGN.md "Common options" of the analyses)."""

    split: Annotated[str, typer.Option("--split", help="Splits to evaluate, comma-separated: train,test")] = \
        "train,test"
    subset: Annotated[Optional[int], typer.Option(
        help="Score a fixed seeded subset of N samples per split (default: the whole split)")] = None
    bn: Annotated[str, typer.Option(
        "--bn", help="recompute: BatchNorm statistics recomputed at every point from the train split; "
                     "keep: the stored ones")] = "recompute"
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size")] = 2048
    seed: Annotated[int, typer.Option(help="Seed of random directions and of --subset")] = 0
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="Forward passes under bfloat16 autocast: ~2x on CPUs with bf16 units and on GPUs, but "
                       "other numbers (recorded in the file)")] = False
    force: Annotated[bool, typer.Option("--force", help="Replace an existing result made by a different command")] = \
        False
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of a table")] = False


@dataclasses.dataclass
class Training:
    """The hyper-parameters of a training run (landscape train and landscape compare).

    Settings a paper preset may fill default to None ("not given"): a --preset fills them,
    otherwise landscape's default (in the help) applies; an explicit value always wins."""

    preset: Annotated[Optional[str], typer.Option(
        help="A paper's recipe: nitanda2024 (asgd), kobayashi2024 (phase), izmailov2018 (swa), foret2021 (sam), "
             "kwon2021 (asam). Fills the settings that paper's code fixes unless given explicitly; without "
             "--optimizer it trains the paper's optimizer (README: 'Paper settings vs landscape defaults')")] = None
    batch_size: Annotated[int, typer.Option(help="Mini-batch size")] = 128
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = 0.1
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum (default 0.9)")] = None
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (default off)",
                                                     show_default=False)] = None
    weight_decay: Annotated[Optional[float], typer.Option(
        help="L2 weight decay, coupled as torch.optim.SGD (default 5e-4)")] = None
    schedule: Annotated[Optional[str], typer.Option(
        help="phases (constant LR per phase), cosine, constant, or linear (the SWA code's: lr, then linear to "
             "--swa-lr) (default phases)")] = None
    phases: Annotated[Optional[str], typer.Option(
        help="epochs:lr per phase, e.g. 80:0.1,40:0.01,40:0.001; default half, quarter, quarter at lr, "
             "lr/10, lr/100")] = None
    average: Annotated[bool, typer.Option(
        "--average", help="Also keep a running average of the iterates of sgd/sam/asam/lookahead "
                          "(e.g. averaged SAM)")] = False
    avg_start: Annotated[Optional[int], typer.Option(
        help="First epoch averaged by asgd/--average (default: epochs//2 + 1)")] = None
    avg_every: Annotated[Optional[str], typer.Option(help="Average every 'epoch' or every 'step' (default epoch)")] = None
    swa_start: Annotated[Optional[int], typer.Option(help="First SWA epoch (default 75% of epochs)")] = None
    swa_lr: Annotated[Optional[float], typer.Option(help="SWA learning rate (default lr/2)")] = None
    swa_cycle: Annotated[int, typer.Option(
        help="0: constant SWA LR, average each epoch; c>0: cyclic LR over c epochs, average at cycle ends")] = 0
    swa_lr_max: Annotated[Optional[float], typer.Option(help="Top of each SWA cycle (default lr)")] = None
    gamma0: Annotated[Optional[float], typer.Option(
        help="Phase-wise base decay; gamma = gamma0^(80/T_p) (default 0.9)")] = None
    phase_momentum: Annotated[str, typer.Option(
        help="At a phase start from the average: 'keep' or 'reset' the momentum buffer")] = "keep"
    rho: Annotated[Optional[float], typer.Option(help="SAM/ASAM radius (default 0.05 SAM, 0.5 ASAM)")] = None
    asam_eta: Annotated[Optional[float], typer.Option(help="ASAM eta in T = |w| + eta (default 0.01)")] = None
    asam_filterwise: Annotated[bool, typer.Option(help="ASAM with filter-wise T instead of element-wise")] = False
    asam_scope: Annotated[Optional[str], typer.Option(
        help="Parameters ASAM rescales: all (the paper's eq. 5, default) or weights (the official code: T = 1 "
             "for biases and BatchNorm shifts)")] = None
    lookahead_k: Annotated[Optional[int], typer.Option(help="Lookahead: fast steps per slow update (default 5)")] = None
    lookahead_alpha: Annotated[Optional[float], typer.Option(help="Lookahead: slow step size (default 0.5)")] = None
    bn_data: Annotated[Optional[str], typer.Option(
        help="Data for averaged models' BatchNorm statistics: plain (the un-augmented train split, what the "
             "analyses' --bn recompute sees; default) or augmented (through the training augmentation, as the "
             "SWA and averaged-SGD codes)")] = None
    eval_every: Annotated[int, typer.Option(
        help="Score the train split every K epochs (and at the last); the test split is scored every epoch")] = 1
    eval_train_samples: Annotated[Optional[int], typer.Option(
        help="Train samples scored per epoch: a fixed seeded subset (default: as many as the test split; 0: the "
             "whole split); the whole split at the last epoch")] = None
    eval_batch_size: Annotated[Optional[int], typer.Option(
        help="Scoring batch (default 128 on CPU, 1024 on accelerators)")] = None
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="2-D conv nets in channels_last memory format (faster on CPUs and tensor "
                                "cores)")] = False
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="Training forward passes under bfloat16 autocast (faster; changes the numerics; "
                       "evaluation stays float32)")] = False


# ---------------------------------------------------------------- the decorator


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def grouped(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expand the group parameters of ``command`` into their fields for typer (see module doc)."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for p in inspect.signature(command).parameters.values():
        annotation = hints.get(p.name, p.annotation)
        if not _is_group(annotation):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
            continue
        groups[p.name] = annotation
        field_hints = typing.get_type_hints(annotation, include_extras=True)
        for f in dataclasses.fields(annotation):
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                            annotation=field_hints[f.name], default=f.default))
    names = [p.name for p in params]
    if clash := {n for n in names if names.count(n) > 1}:
        raise TypeError(f"{command.__name__}: options declared twice: {sorted(clash)}")

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return command(**kwargs)

    del run.__wrapped__  # typer must read the expanded signature, not the original one
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run

"""The analysis commands: interpolate, rays, surface, segments, twopoint, trajectory; and wrap.

Each parses its own arguments, takes the shared option groups (model and data, evaluation,
runtime) and calls the analysis of the same name in ``landscape.analyses``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import analysis_options, console, run_analysis
from cli.options import Evaluation, ModelAndData, Runtime, grouped

Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Result file (.h5)")]
Norm = Annotated[str, typer.Option(help="Direction normalization: filter (Li et al.), layer or none "
                                        "(unit-norm, Euclidean)")]
Ignore = Annotated[str, typer.Option(help="biasbn: leave biases and BatchNorm parameters unperturbed; none: "
                                          "perturb them too")]
Phase = Annotated[Optional[int], typer.Option(
    help="Only LR phase K (1, 2, ...: runs of one learning rate, as the phase-wise paper's figures); "
         "default: the whole run")]
Series = Annotated[list[Path], typer.Argument(
    help="RUN/<optimizer>, a folder of checkpoint files, or the files themselves (a glob in quotes works too); "
         "ordered by the epoch or step they store, else by natural file-name order",
    show_default=False)]

OWN = ("  landscape interpolate sgd.pt swa.pt --model mymodels:net --dataset mydata:splits   "
       "(plain state_dicts of your own model and data)")


def register(app: typer.Typer) -> None:
    for command in (interpolate, rays, surface, segments, twopoint, trajectory, wrap):
        app.command(epilog=EPILOGS[command.__name__])(command)


@grouped
def interpolate(
    a: Annotated[Path, typer.Argument(help="Checkpoint at alpha = 0")],
    b: Annotated[Path, typer.Argument(help="Checkpoint at alpha = 1")],
    out: Out = None,
    range_: Annotated[str, typer.Option("--range", help="alpha range LO:HI or LO:HI:N")] = "-0.5:1.5",
    points: Annotated[int, typer.Option(help="Number of alphas (when --range is LO:HI)")] = 41,
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """Loss and accuracy along (1-a)A + aB (SWA Fig. 5)."""
    from landscape.analyses import interpolate as run, parse_range

    alphas = parse_range(range_, "--range", default_points=points)
    run_analysis("interpolate", source, evaluation, runtime,
                 lambda o: run(a, b, out or Path("interpolate.h5"), alphas, o))


@grouped
def rays(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints; the same rays are used for all")],
    out: Out = None,
    n_rays: Annotated[int, typer.Option("--rays", help="Number of random rays")] = 10,
    distance: Annotated[str, typer.Option(help="Distances along each ray LO:HI:N")] = "0:1:21",
    norm: Norm = "filter",
    ignore: Ignore = "biasbn",
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """Loss along random rays from each checkpoint (SWA Fig. 4)."""
    from landscape.analyses import parse_range, rays as run

    distances = parse_range(distance, "--distance")
    run_analysis("rays", source, evaluation, runtime,
                 lambda o: run(checkpoints, out or Path("rays.h5"), distances, n_rays, norm, ignore, o))


@grouped
def surface(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint at the origin of the plane")],
    out: Out = None,
    x: Annotated[Optional[str], typer.Option("--x", help="x grid LO:HI:N (default -1:1:21, or around the models "
                                                         "with --through)")] = None,
    y: Annotated[Optional[str], typer.Option("--y", help="y grid LO:HI:N")] = None,
    through: Annotated[Optional[tuple[Path, Path]], typer.Option(
        help="Two checkpoints A B: the plane through CHECKPOINT, A and B", show_default=False)] = None,
    grid: Annotated[int, typer.Option(help="Points per axis when --x/--y are not given")] = 21,
    norm: Norm = "filter",
    ignore: Ignore = "biasbn",
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """Loss on a 2-D plane: random filter-normalized directions, or through three models."""
    from landscape.analyses import parse_range, surface as run

    xs = parse_range(x, "--x") if x else None
    ys = parse_range(y, "--y") if y else None
    run_analysis("surface", source, evaluation, runtime,
                 lambda o: run(checkpoint, out or Path("surface.h5"), xs, ys, tuple(through) if through else None,
                               norm, ignore, grid, o))


def _beside(series: list[Path], name: str) -> Path:
    """Default output: inside RUN/<optimizer> (or a folder) when one was given, else here."""
    if len(series) == 1 and series[0].is_dir():
        return series[0] / name
    return Path(name)


@grouped
def segments(
    checkpoints: Series,
    out: Out = None,
    epochs: Annotated[Optional[str], typer.Option(
        help="Anchor epochs, e.g. 1,20,40,60,80 (default: 5 evenly spaced; positions 0.. when the files store "
             "no epochs)")] = None,
    points: Annotated[int, typer.Option(help="Points per segment")] = 21,
    phase: Phase = None,
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """Loss on the segments joining chosen epochs of a run (phase-wise Fig. 2)."""
    from landscape.analyses import parse_int_list, segments as run

    anchors = parse_int_list(epochs, "--epochs") if epochs else None
    run_analysis("segments", source, evaluation, runtime,
                 lambda o: run(checkpoints, out or _beside(checkpoints, "segments.h5"), anchors, points, o,
                               phase=phase))


@grouped
def twopoint(
    checkpoints: Series,
    out: Out = None,
    ref: Annotated[Optional[int], typer.Option(
        help="Reference epoch (default: the last, or the end of --phase)")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(
        help="Largest interval in epochs (default: back to the first checkpoint, or the start of --phase)")] = None,
    phase: Phase = None,
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """Loss of (theta_ref + theta_ref-k)/2 over intervals k in steps and epochs (phase-wise Fig. 3)."""
    from landscape.analyses import twopoint as run

    run_analysis("twopoint", source, evaluation, runtime,
                 lambda o: run(checkpoints, out or _beside(checkpoints, "twopoint.h5"), ref, max_epochs, o,
                               phase=phase))


@grouped
def trajectory(
    checkpoints: Series,
    out: Out = None,
    layer: Annotated[Optional[str], typer.Option(
        help="PCA of one layer only, e.g. fc; 'last' is the last linear layer (the phase-wise paper's Fig. 1)")] = None,
    with_surface: Annotated[bool, typer.Option(
        "--surface", help="Also the loss on the PCA plane around the final point")] = False,
    grid: Annotated[int, typer.Option(help="Points per axis of --surface")] = 21,
    center: Annotated[str, typer.Option(
        help="PCA centering: mean, last, or loss-landscape (its recipe: components of the differences to the "
             "final point, which sits at the origin)")] = "mean",
    phase: Phase = None,
    source: ModelAndData = ModelAndData(),
    evaluation: Evaluation = Evaluation(),
    runtime: Runtime = Runtime(),
) -> None:
    """PCA and time-delay coordinates of the per-epoch weights (phase-wise Fig. 1)."""
    from landscape.analyses import trajectory as run

    run_analysis("trajectory", source, evaluation, runtime,
                 lambda o: run(checkpoints, out or _beside(checkpoints, "trajectory.h5"), layer, with_surface,
                               grid, center, o, phase=phase))


@grouped
def wrap(
    checkpoint: Annotated[Path, typer.Argument(help="A foreign checkpoint (plain state_dict, Lightning, DDP, "
                                                    "AveragedModel...)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The self-describing checkpoint to write (.pt)")],
    source: ModelAndData = ModelAndData(),
    runtime: Runtime = Runtime(),
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists")] = False,
) -> None:
    """Write a self-describing landscape checkpoint of a foreign one, so later commands need no --model/--dataset."""
    from landscape.analyses import wrap_checkpoint

    opts = analysis_options(source, Evaluation(split="train"), runtime)
    path, ckpt = wrap_checkpoint(checkpoint, out, opts, force=force)
    console.print(f"wrote {path}: model {ckpt.model['name']}, data {ckpt.data['name']}"
                  + (f" ({'; '.join(ckpt.notes)})" if ckpt.notes else ""), highlight=False, markup=False)


EPILOGS = {
    "interpolate": (
        "Examples:\n\n"
        "  landscape interpolate runs/x/sgd/final.pt runs/x/swa/averaged.pt -o line.h5\n\n"
        "  landscape interpolate A.pt B.pt --range -1:2 --points 61 --split test --subset 2000\n\n" + OWN),
    "rays": (
        "Examples:\n\n"
        "  landscape rays runs/x/sgd/final.pt runs/x/swa/averaged.pt --rays 10 -o rays.h5\n\n"
        "  landscape rays A.pt --norm none --distance 0:20:41"),
    "surface": (
        "Examples:\n\n"
        "  landscape surface runs/x/swa/averaged.pt --x -1:1:21 --y -1:1:21 -o surface.h5\n\n"
        "  landscape surface runs/x/sgd/checkpoints/epoch_0000.pt --through runs/x/sgd/final.pt "
        "runs/x/swa/averaged.pt\n\n"
        "  landscape surface model.pt --model torchvision:resnet18 --dataset cifar10 --data-dir ~/data"),
    "segments": (
        "Examples:\n\n  landscape segments runs/x/sgd --epochs 1,5,10,15,20\n\n"
        "  landscape segments runs/x/sgd --phase 1   (the phase-wise paper's Fig. 2: anchors in the first LR phase)\n\n"
        "  landscape segments 'ckpts/epoch*.pt' --model mymodels:net --dataset mydata:splits"),
    "twopoint": (
        "Examples:\n\n  landscape train --optimizer sgd --save-every-steps 4 --out runs/s\n\n"
        "  landscape twopoint runs/s/sgd --ref 10\n\n"
        "  landscape twopoint runs/s/sgd --phase 1   (Fig. 3: the end of phase 1 with the points of that phase)\n\n"
        "  landscape twopoint ckpts/ --model mymodels:net --dataset mydata:splits"),
    "trajectory": (
        "Examples:\n\n  landscape trajectory runs/x/sgd\n\n"
        "  landscape trajectory runs/x/sgd --layer fc --surface --grid 25\n\n"
        "  landscape trajectory runs/x/sgd --layer last --phase 1   (Fig. 1: one PCA per LR phase)\n\n"
        "  landscape trajectory ckpt_1.pt ckpt_2.pt ckpt_10.pt --model mymodels:net --dataset mydata:splits"),
    "wrap": (
        "Examples:\n\n"
        "  landscape wrap sgd_state_dict.pt --model mymodels:net --dataset mydata:splits -o sgd.pt\n\n"
        "  landscape wrap lightning.ckpt --model torchvision:resnet18 --model-option num_classes=10 "
        "--dataset cifar10 --data-dir ~/data -o r18.pt\n\n"
        "  then: landscape interpolate sgd.pt swa.pt   (a factory of your own is still named with --model: "
        "reading a file never imports code)"),
}

"""The whole chain on the embedded default, small enough to run in a couple of minutes on 2 cores.

Train sgd and swa from one initialization on MNIST-1D, then: the line between their
solutions, the top Hessian eigenvalue along that line (on a fixed 1000-sample subset of
the train split: "SWA is flatter" as a curve), random rays from both, the plane through
SWA's last iterate, the SGD solution and the SWA average (the SWA paper's Fig. 1, right),
and the PCA trajectory of SGD from its initialization with the loss on the PCA plane;
finally one HTML report.

Under torchrun every step is already distributed (DDP training, analyses with rank 0 as
the only writer); the report is drawn by rank 0 alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from landscape import distributed
from landscape.analyses import AnalysisOptions, SharpnessOptions, interpolate, rays, sharpness, surface, trajectory
from landscape.plots import report
from landscape.train import OptimizerResult, TrainConfig, train


# The demo's setting: one where SWA's flatter solution shows in every figure (README "The
# demo"). SGD follows the default phases (half, quarter, quarter of the epochs at lr, lr/10,
# lr/100); SWA leaves them after the first phase and averages the iterates of a constant
# lr = 0.1 once per epoch. 32 channels: the run and its analyses fit in about two minutes
# on 2 cores. Epoch counts scale with --epochs.
DEMO_EPOCHS = 30
DEMO_SETTING: dict[str, Any] = {
    "model": "cnn1d", "model_options": {"channels": 32}, "data_options": {"num_train": 4000, "num_test": 1000},
    "lr": 0.1, "swa_lr": 0.1,
}
# Rays along unit-norm directions (Euclidean distance), as the SWA paper's Fig. 4 draws them;
# in filter-normalised units the two solutions' rays are about equally wide here (README).
RAY_NORM, RAY_DISTANCE = "none", 10.0


def demo_config(epochs: int = DEMO_EPOCHS, device: str = "auto", **overrides: Any) -> TrainConfig:
    """sgd and swa in the demo's setting; SWA averages from the epoch after the first LR phase."""
    settings = {**DEMO_SETTING, **overrides}
    settings.setdefault("swa_start", epochs // 2 + 1)
    return TrainConfig(optimizers=["sgd", "swa"], epochs=epochs, device=device, **settings)


@dataclass
class DemoSummary:
    training: list[OptimizerResult]
    analyses: list[tuple[str, Path, float]] = field(default_factory=list)  # (name, file, seconds)
    report: Path | None = None


def run_demo(
    out: str | Path = "runs/demo",
    report_path: str | Path = "report.html",
    *,
    epochs: int = DEMO_EPOCHS,
    device: str = "auto",
    setting: dict[str, Any] | None = None,
    train_progress: Callable[[dict[str, Any]], None] | None = None,
    point_progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    out = Path(out)
    results = train(demo_config(epochs, device, **(setting or {})), out, force=True, progress=train_progress)
    summary = DemoSummary(training=results)
    sgd, swa = out / "sgd" / "final.pt", out / "swa" / "averaged.pt"
    # The whole test split and the whole train split, as everywhere; BatchNorm (if the model
    # had any) recomputed at every point.
    opts = AnalysisOptions(device=device, command="landscape demo", overwrite=True, progress=point_progress)
    line = out / "interpolate.h5"
    flatness = replace(opts, splits=("train",), subset=1000)
    point = SharpnessOptions(top_k=1, tol=1e-3, trace=True, sam=True)
    steps: list[tuple[str, Callable[[], Path]]] = [
        # Past SWA to alpha = 2: the test loss keeps falling beyond the average here, and a
        # minimum at the grid's end would only bound where it lies.
        ("interpolate", lambda: interpolate(sgd, swa, line, np.linspace(-0.5, 2.0, 21), opts)),
        ("sharpness", lambda: sharpness(None, out / "sharpness.h5", SharpnessOptions(along=str(line), top_k=1),
                                        flatness)),
        # The solutions' flatness in numbers (the report's first table): lambda_max, trace and
        # SAM sharpness at each, on the same train subset as the curve along the line.
        ("sharpness_sgd", lambda: sharpness(sgd, out / "sharpness_sgd.h5", point, flatness)),
        ("sharpness_swa", lambda: sharpness(swa, out / "sharpness_swa.h5", point, flatness)),
        ("rays", lambda: rays([sgd, swa], out / "rays.h5", np.linspace(0, RAY_DISTANCE, 11), n_rays=5,
                              norm=RAY_NORM, opts=opts)),
        ("surface", lambda: surface(out / "swa" / "final.pt", out / "surface.h5",
                                    through=(sgd, swa), grid_points=15, opts=opts)),
        ("trajectory", lambda: trajectory(out / "sgd", out / "sgd" / "trajectory.h5", with_surface=True,
                                          grid_points=11, opts=opts)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        path = step()
        summary.analyses.append((name, path, time.perf_counter() - start))
    # One writer; every rank gets the path (or rank 0's error).
    summary.report = distributed.on_main(lambda: report(out, report_path), share=lambda path: path)[1]
    return summary

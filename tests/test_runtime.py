"""Threads: --threads is applied, and the default never oversubscribes a busy machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from landscape import device
from tests.test_cli import SMALL, assert_one_line_error, landscape
from tests.test_cli import landscape as landscape_cli


@pytest.mark.parametrize("cores,busy,world,want", [(4, 0.2, 1, 4), (4, 1.4, 1, 3), (2, 1.0, 1, 1), (2, 5.0, 1, 1),
                                                    (8, 0.0, 2, 4)])
def test_default_threads_leave_busy_cores_alone(monkeypatch, cores, busy, world, want):
    monkeypatch.setattr(device, "_usable_cores", lambda: cores)
    monkeypatch.setattr(device, "_busy_cores", lambda seconds: busy)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(world))
    assert device.default_threads() == want


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert device._busy_cores(0.5) >= 0.8  # at least the spinner's core (plus whatever else runs)
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_option_is_applied_and_reported(tmp_path):
    run = tmp_path / "run"
    result = landscape("train", "--epochs", "1", *SMALL, "--out", str(run), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "1 CPU thread" in result.stdout
    result = landscape("interpolate", str(run / "sgd" / "checkpoints" / "epoch_0000.pt"), str(run / "sgd" / "final.pt"),
                       "--points", "3", "--range", "0:1", "--threads", "1", "--device", "cpu", "-o",
                       str(tmp_path / "l.h5"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 1
    assert_one_line_error(landscape("interpolate", "a.pt", "b.pt", "--threads", "0"), "--threads")


def test_version():
    from importlib.metadata import version

    import landscape

    result = landscape_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"landscape {landscape.__version__} (torch {version('torch')}")


def test_progress_moves_point_by_point_and_logs_without_a_tty(tmp_path):
    import numpy as np

    from landscape.analyses import AnalysisOptions, interpolate
    from landscape.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data_options={"num_train": 128, "num_test": 64}, model_options={"channels": 4}, epochs=1,
                      device="cpu"), run)
    seen = []
    interpolate(run / "sgd" / "checkpoints" / "epoch_0000.pt", run / "sgd" / "final.pt", tmp_path / "l.h5",
                np.linspace(0, 1, 5), AnalysisOptions(device="cpu", progress=lambda d, t: seen.append((d, t))))
    assert seen == [(i, 5) for i in range(6)]  # every point, not one jump at the end
    # Not a terminal (a pipe here): plain lines instead of a bar, the last one at the end.
    result = landscape("interpolate", str(run / "sgd" / "checkpoints" / "epoch_0000.pt"), str(run / "sgd" / "final.pt"),
                       "--points", "5", "--range", "0:1", "--device", "cpu", "-o", str(tmp_path / "m.h5"))
    assert result.returncode == 0, result.stderr
    assert "interpolate: points 5/5" in result.stdout


def test_time_left_is_estimated_per_optimizer(monkeypatch):
    """The second optimizer of a run gets its own rate: 10 s per epoch for sgd must not make
    sam's first epoch (done 100 s after the start) predict 100 s per epoch."""
    import io

    from rich.console import Console

    from cli import common

    clock = {"now": 0.0}
    monkeypatch.setattr(common.time, "monotonic", lambda: clock["now"])
    out = io.StringIO()
    progress = common.TrainProgress(Console(file=out, force_terminal=False, width=200))
    for name, start in (("sgd", 0.0), ("sam", 100.0)):
        clock["now"] = start
        progress({"optimizer": name, "epoch": 1, "batch": 1, "batches": 10, "epochs": 10, "loss": 1.0, "lr": 0.1})
        for epoch in (1, 2):
            clock["now"] = start + 20.0 * epoch  # 20 s per epoch
            progress({"optimizer": name, "epoch_done": epoch, "epochs": 10, "metrics": {}})
    # The next seed trains sgd again from its start: its own rate again, not the first seed's.
    clock["now"] = 500.0
    progress({"optimizer": "sgd", "epoch": 1, "batch": 1, "batches": 10, "epochs": 10, "loss": 1.0, "lr": 0.1})
    for epoch in (1, 2):
        clock["now"] = 500.0 + 20.0 * epoch
        progress({"optimizer": "sgd", "epoch_done": epoch, "epochs": 10, "metrics": {}})
    lines = out.getvalue().splitlines()
    # 8 epochs left at 20 s each (the rate since the optimizer's first step: 1.9 epochs in 40 s)
    for name in ("sam", "sgd"):
        last = [line for line in lines if line.startswith(f"{name}: epoch 2/10")][-1]
        assert "about 168 s left" in last, lines

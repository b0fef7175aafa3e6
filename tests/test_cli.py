"""The command line: bad input gives one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SMALL = ["--data-option", "num_train=256", "--data-option", "num_test=128", "--device", "cpu"]


def landscape(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"}, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def test_train_json_output(tmp_path):
    result = landscape("train", "--optimizer", "sgd", "--epochs", "1", *SMALL, "--out", str(tmp_path / "r"),
                       "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["sgd"]["epoch"] == 1 and 0 <= payload["sgd"]["test_acc"] <= 1


@pytest.mark.parametrize("args,fragment", [
    (["--optimizer", "adamw"], "unknown optimizer"),
    (["--phases", "10:0.1,oops"], "oops"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--model", "resnet7"], "resnet7"),
    (["--dataset", "cifar10"], "--data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--epochs", "-3"], "--epochs"),
    (["--device", "tpu"], "--device"),
    (["--data-option", "oops"], "key=value"),
])
def test_bad_train_input(tmp_path, args, fragment):
    small = [] if "cifar10" in args else SMALL
    result = landscape("train", *small, "--epochs", "1", *args, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, fragment)


def test_unwritable_out_and_existing_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(landscape("train", *SMALL, "--epochs", "1", "--out", str(blocker / "run")), str(blocker))
    out = tmp_path / "run"
    assert landscape("train", *SMALL, "--epochs", "1", "--out", str(out)).returncode == 0
    assert_one_line_error(landscape("train", *SMALL, "--epochs", "1", "--out", str(out)), "--resume")


def test_help_has_examples():
    result = landscape("train", "--help")
    assert result.returncode == 0 and "landscape train --optimizer sgd --optimizer swa" in result.stdout


@pytest.mark.parametrize("command", ["interpolate", "rays", "surface", "segments", "twopoint", "trajectory",
                                     "sharpness", "compare", "plot", "report", "demo"])
def test_every_command_help_shows_an_example(command):
    result = landscape(command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout
    # The usage line says "python -m cli.main": "landscape CMD ..." can only be an example.
    assert f"landscape {command}" in result.stdout


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = landscape("train", "--optimizer", "sgd", "--optimizer", "swa", "--epochs", "3", "--swa-start", "2",
                       *SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_analysis_plot_and_report(small_run, tmp_path):
    line = small_run / "line.h5"
    result = landscape("interpolate", str(small_run / "sgd" / "final.pt"), str(small_run / "swa" / "averaged.pt"),
                       "--points", "5", "--split", "test", "--device", "cpu", "-o", str(line), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["analysis"] == "interpolate" and summary["points"] == 5
    assert summary["splits"]["test"]["diverged_points"] == 0
    again = landscape("interpolate", str(small_run / "sgd" / "final.pt"), str(small_run / "swa" / "averaged.pt"),
                      "--points", "5", "--split", "test", "--device", "cpu", "-o", str(line), "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == summary  # a finished result is not recomputed
    result = landscape("plot", str(line), "-o", str(tmp_path / "line.html"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "line.html").stat().st_size > 100_000  # plotly.js is embedded
    result = landscape("report", str(small_run), "-o", str(tmp_path / "report.html"))
    assert result.returncode == 0, result.stderr
    assert "line.h5" in (tmp_path / "report.html").read_text()


def test_surface_through_takes_two_checkpoints_after_one_flag(small_run, tmp_path):
    run = small_run / "sgd"
    out = tmp_path / "plane.h5"
    result = landscape("surface", str(run / "checkpoints" / "epoch_0000.pt"), "--through", str(run / "final.pt"),
                       str(small_run / "swa" / "averaged.pt"), "--grid", "3", "--split", "test",
                       "--subset", "64", "--device", "cpu", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] == 9


@pytest.mark.parametrize("args,fragment", [
    (["interpolate", "missing_a.pt", "missing_b.pt"], "missing_a.pt"),
    (["interpolate", "{run}/sgd/final.pt", "{run}/swa/averaged.pt", "--range", "1:0"], "empty range"),
    (["interpolate", "{run}/sgd/final.pt", "{run}/swa/averaged.pt", "--bn", "maybe"], "--bn"),
    (["interpolate", "{run}/sgd/final.pt", "{run}/swa/averaged.pt", "--bn-samples", "1"], "--bn-samples"),
    (["interpolate", "{run}/sgd/final.pt", "{run}/swa/averaged.pt", "--bn-samples", "100000"], "train split"),
    (["surface", "{run}/sgd/final.pt", "--bn-batch", "1"], "--bn-batch"),
    (["rays", "{run}/sgd/final.pt", "--bn", "keep", "--bn-samples", "64"], "--bn recompute"),
    (["rays", "{run}/sgd/final.pt", "--rays", "0"], "--rays"),
    (["surface", "{run}/sgd/final.pt", "--x", "-1:1"], "--x"),
    (["surface", "{run}/sgd/final.pt", "--norm", "spectral"], "spectral"),
    (["segments", "{run}", "--epochs", "1,2"], "RUN/<optimizer>"),
    (["segments", "{run}/sgd", "--epochs", "1,99"], "epoch 99"),
    (["trajectory", "{run}/sgd", "--layer", "nope"], "nope"),
    (["plot", "{run}/sgd/final.pt"], "final.pt"),
    (["report", "{run}/nowhere"], "nowhere"),
])
def test_bad_analysis_input(small_run, args, fragment):
    result = landscape(*[a.format(run=small_run) for a in args], "--device", "cpu") if args[0] not in (
        "plot", "report") else landscape(*[a.format(run=small_run) for a in args])
    assert_one_line_error(result, fragment)


def test_demo_end_to_end(tmp_path):
    import h5py
    import numpy as np

    out, report = tmp_path / "demo", tmp_path / "report.html"
    # 1-2 minutes on 2 idle cores; the limit leaves room for a machine busy with other work
    # (the default --threads then takes the idle cores only) and still catches a hang.
    result = landscape("demo", "--epochs", "3", "--device", "cpu", "--out", str(out), "--report", str(report),
                       "--json", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. torch's torch.jit.script FutureWarning
    summary = json.loads(result.stdout)
    assert summary["report"] == str(report) and summary["training"]["swa"]["epoch"] == 3
    assert [a["analysis"] for a in summary["analyses"]] == ["interpolate", "sharpness", "sharpness_sgd",
                                                           "sharpness_swa", "rays", "surface", "trajectory"]
    page = report.read_text()
    for name in ("interpolate.h5", "sharpness.h5", "sharpness_sgd.h5", "sharpness_swa.h5", "rays.h5", "surface.h5",
                 "trajectory.h5"):
        assert name in page
    # The page opens with the solutions' flatness in numbers and one line on what the figures show.
    assert page.index("Flatness of the solutions") < page.index("<h2>Training</h2>")
    assert "What the figures show:" in page and "swa/averaged.pt" in page
    # The line's endpoints are the trained models: alpha = 0 and 1 hold the test loss the
    # trainer measured for sgd's last iterate and swa's average (cnn1d has no BatchNorm).
    sgd = json.loads((out / "sgd" / "metrics.jsonl").read_text().splitlines()[-1])
    swa = json.loads((out / "swa" / "metrics.jsonl").read_text().splitlines()[-1])
    with h5py.File(out / "interpolate.h5") as f:
        alpha, loss = f["alpha"][()], f["test/loss"][()]
        assert f["done"][()].all()
    assert np.isclose(loss[np.isclose(alpha, 0)][0], sgd["test_loss"], rtol=1e-6)
    assert np.isclose(loss[np.isclose(alpha, 1)][0], swa["averaged_test_loss"], rtol=1e-6)
    with h5py.File(out / "surface.h5") as f:
        assert f.attrs["analysis"] == "surface" and f["done"][()].all() and len(f["models/coords"]) == 3


@pytest.mark.parametrize("args,fragment", [
    (["interpolate", "--nope"], "--nope"),
    (["interpolate", "only_a.pt"], "Missing argument"),
    (["rays", "a.pt", "--rays", "abc"], "--rays"),
    (["surface", "a.pt", "--through", "b.pt"], "--through"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_usage_errors_are_one_line_too(args, fragment):
    assert_one_line_error(landscape(*args), fragment)


def test_help_still_exits_zero():
    for args in (["--help"], ["surface", "--help"]):
        result = landscape(*args)
        assert result.returncode == 0 and "Usage" in result.stdout

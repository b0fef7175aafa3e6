"""The command line: bad input gives one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SMALL = ["--data-option", "num_train=256", "--data-option", "num_test=128", "--device", "cpu"]


def landscape(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"},
                          timeout=300)


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

"""torchrun: 2 CPU processes (gloo) on the embedded default against one process.

The distributed runs go through the real launcher (`torchrun --standalone
--nproc_per_node=2 -m cli.main ...`) in a subprocess; the single-process references are
computed in this process with the library. Tiny sizes keep the file fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import distributed
from landscape.analyses import AnalysisOptions, surface
from landscape.checkpoint import load_checkpoint
from landscape.store import load_result
from landscape.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_train": 384, "num_test": 256}
DATA = ["--data-option", "num_train=384", "--data-option", "num_test=256", "--device", "cpu"]
X, Y = "-1:1:6", "-1:1:5"  # 30 points: 15 chunks of 2 with 2 ranks

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def torchrun(*args: str, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).with_name("torchrun")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc_per_node={nproc}", "-m", "cli.main", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@contextlib.contextmanager
def one_thread():
    """The in-process references on one intra-op thread, as each torchrun rank runs: on 2
    shared cores a 2-thread process next to busy ones stalls for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "run"
    with one_thread():
        train(TrainConfig(data_options=dict(SMALL), batch_size=64, epochs=1, device="cpu", seed=2), out)
    return out / "sgd" / "final.pt"


@pytest.fixture(scope="module")
def one_shot(ckpt, tmp_path_factory) -> Path:
    """The surface computed by one process, in one go."""
    from landscape.analyses import parse_range

    out = tmp_path_factory.mktemp("one") / "surface.h5"
    with one_thread():
        return surface(ckpt, out, parse_range(X, "--x"), parse_range(Y, "--y"), opts=AnalysisOptions(device="cpu"))


def assert_same_result(a: Path, b: Path, tol: float = 1e-6) -> None:
    ra, rb = load_result(a), load_result(b)
    assert ra.done.all() and rb.done.all()
    assert ra.dims == rb.dims
    for name in ra.coords:
        np.testing.assert_array_equal(ra.coords[name], rb.coords[name])
    for split, metrics in ra.metrics.items():
        for metric, values in metrics.items():
            np.testing.assert_allclose(rb.metrics[split][metric], values, rtol=0, atol=tol,
                                       err_msg=f"{split}/{metric}")
    for key in ("analysis", "normalization", "checkpoint_sha256", "dataset", "subset", "bn_mode", "seed"):
        assert ra.attrs.get(key) == rb.attrs.get(key), key


def test_sharded_surface_equals_single_process(ckpt, one_shot, tmp_path):
    out = tmp_path / "surface.h5"
    ok(torchrun("surface", str(ckpt), "--x", X, "--y", Y, "-o", str(out), *DATA[-2:], "--json"))
    assert out.exists() and not Path(f"{out}.partial").exists()
    assert_same_result(one_shot, out)


def test_killed_two_rank_run_resumes_with_one_rank(ckpt, one_shot, tmp_path):
    out = tmp_path / "surface.h5"
    partial = Path(f"{out}.partial")
    args = ("surface", str(ckpt), "--x", X, "--y", Y, "-o", str(out), *DATA[-2:])
    # Rank 0 SIGKILLs itself after writing 3 chunks; torchrun then stops rank 1 too.
    killed = torchrun(*args, env={"LANDSCAPE_TEST_STOP_AFTER": "3"})
    assert killed.returncode != 0
    assert partial.exists() and not out.exists()
    done = load_result(partial).done
    assert 0 < done.sum() < done.size
    # The same command, one process (here: in this process, through the library).
    from landscape.analyses import parse_range

    with one_thread():
        surface(ckpt, out, parse_range(X, "--x"), parse_range(Y, "--y"), opts=AnalysisOptions(device="cpu"))
    assert out.exists() and not partial.exists()
    assert_same_result(one_shot, out)


def test_one_rank_partial_finished_by_two_ranks(ckpt, one_shot, tmp_path):
    """The other direction: a partial file of a single-process run, finished under torchrun."""
    out = tmp_path / "surface.h5"
    partial = Path(f"{out}.partial")
    # What a single process killed after its first 10 points leaves behind (its chunks are
    # up to 256 points, so make it from the one-shot result: clear the other points).
    shutil.copy(one_shot, partial)
    import h5py

    with h5py.File(partial, "r+") as h5:
        done = h5["done"][...]
        done.reshape(-1)[10:] = False
        h5["done"][...] = done
        for split in ("train", "test"):
            for metric in ("loss", "accuracy"):
                values = h5[f"{split}/{metric}"][...]
                values.reshape(-1)[10:] = np.nan
                h5[f"{split}/{metric}"][...] = values
    ok(torchrun("surface", str(ckpt), "--x", X, "--y", Y, "-o", str(out), *DATA[-2:]))
    assert out.exists() and not partial.exists()
    assert_same_result(one_shot, out)


def flat_state(path: Path) -> np.ndarray:
    state = load_checkpoint(path).state_dict
    return np.concatenate([state[k].double().flatten().numpy() for k in sorted(state)])


def test_ddp_training_equals_single_process_on_the_global_batch(tmp_path):
    args = ["--optimizer", "sgd", "--optimizer", "swa", "--optimizer", "sam", "--epochs", "2", "--batch-size", "64",
            "--lr", "0.05", "--swa-start", "2", "--seed", "1", *DATA]
    ok(torchrun("train", *args, "--out", str(tmp_path / "ddp"), "--json"))
    with one_thread():
        train(TrainConfig(optimizers=["sgd", "swa", "sam"], data_options=dict(SMALL), epochs=2, batch_size=64,
                          lr=0.05, swa_start=2, seed=1, device="cpu"), tmp_path / "one")
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    info = json.loads((ddp / "config.json").read_text())
    assert info["distributed"]["world_size"] == 2
    assert info["config"] == json.loads((one / "config.json").read_text())["config"]
    # SGD and SWA (its iterates and its average): the same trajectory up to float reduction order.
    for name, files in (("sgd", ["final.pt"]), ("swa", ["final.pt", "averaged.pt"])):
        for f in files:
            np.testing.assert_allclose(flat_state(ddp / name / f), flat_state(one / name / f), rtol=0, atol=1e-5,
                                       err_msg=f"{name}/{f}")
        a = [json.loads(x) for x in (ddp / name / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (one / name / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in a] == [1, 2]
        for x, y in zip(a, b):
            assert set(x) == set(y)
            for key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-5), key
    # SAM: per-rank perturbations (m-sharpness with m = 32), so a different but finite run,
    # written once by rank 0.
    lines = [json.loads(x) for x in (ddp / "sam" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and all(np.isfinite(x["train_loss"]) for x in lines)
    assert sorted(p.name for p in (ddp / "sam" / "checkpoints").iterdir()) == ["epoch_0000.pt", "epoch_0001.pt",
                                                                               "epoch_0002.pt"]
    assert np.isfinite(flat_state(ddp / "sam" / "final.pt")).all()
    assert not any(p.name.endswith(".tmp") for p in ddp.rglob("*"))


# ----------------------------------------------------------------------------- one process


def test_nothing_happens_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init() is False
    assert not distributed.is_distributed() and not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(10) == slice(0, 10)
    assert distributed.on_main(lambda: 7, share=lambda v: v + 1) == (7, 8)
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model) is model
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.init() is False  # torchrun --nproc_per_node=1: the single-process path


def test_shards_cover_the_range_in_order(monkeypatch):
    for n, world in ((10, 3), (3, 2), (64, 2), (5, 5)):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        parts = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda: r)
            parts.append(distributed.shard(n))
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_work_queue_hands_out_each_job_once_and_collects_every_result():
    kv = torch.distributed.HashStore()
    main, other = distributed.WorkQueue("t", 7, kv), distributed.WorkQueue("t", 7, kv)
    # The other rank is fast: it takes three jobs while rank 0 does one.
    taken = {"main": [main.take()], "other": [other.take() for _ in range(3)]}
    for k in taken["other"]:
        other.post(k, bytes([k]))
    assert sorted(k for k, _ in main.collect()) == taken["other"]
    while (k := main.take()) is not None:
        taken["main"].append(k)
        if (j := other.take()) is not None:
            taken["other"].append(j)
            other.post(j, bytes([j]))
    rest = []
    while main.pending():
        rest += main.wait(poll=0.001)
    assert sorted(taken["main"] + taken["other"]) == list(range(7))
    assert all(data == bytes([k]) for k, data in rest)
    assert other.take() is None and not main.pending()

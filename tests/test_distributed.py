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


# ----------------------------------------------------------------------------- sharpness

# Data-parallel HVPs: 200 samples in 4 HVP batches (64, 64, 64, 8), two per rank. The HVP
# kind is pinned because "auto" may time differently from one run to the next.
SHARP = {"subset": 200, "batch_size": 64, "top_k": 3, "lanczos_steps": 10, "trace_probes": 6, "hvp": "double-backward"}
SHARP_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SHARP.items()] + ["--trace", "--no-sam"]
NOISE_ARGS = ["--noise", "--noise-samples=4", "--stability-samples=4"]


@pytest.fixture(scope="module")
def sharp_one(ckpt, tmp_path_factory) -> Path:
    """The sharpness of one process, through the library."""
    from landscape.analyses.sharpness import SharpnessOptions, sharpness

    sopts = SharpnessOptions(top_k=SHARP["top_k"], lanczos_steps=SHARP["lanczos_steps"], trace=True,
                             trace_probes=SHARP["trace_probes"], noise=True, noise_samples=4, stability_samples=4,
                             sam=False, hvp=SHARP["hvp"])
    opts = AnalysisOptions(splits=("train",), subset=SHARP["subset"], batch_size=SHARP["batch_size"], device="cpu")
    with one_thread():
        return sharpness(ckpt, tmp_path_factory.mktemp("sharp") / "sharpness.h5", sopts, opts)


def assert_same_sharpness(a: Path, b: Path, names: tuple[str, ...]) -> None:
    ra, rb = load_result(a), load_result(b)
    for name in names:
        np.testing.assert_allclose(rb.extra[name], ra.extra[name], rtol=1e-6, atol=0, err_msg=name)
    np.testing.assert_allclose(rb.metrics["train"]["loss"], ra.metrics["train"]["loss"], rtol=1e-6)


def test_data_parallel_sharpness_equals_single_process(ckpt, sharp_one, tmp_path):
    out = tmp_path / "sharpness.h5"
    ok(torchrun("sharpness", str(ckpt), "-o", str(out), *SHARP_ARGS, *NOISE_ARGS, *DATA[-2:], "--json"))
    assert out.exists() and not Path(f"{out}.partial").exists()
    assert sorted(load_result(out).extra) == sorted(load_result(sharp_one).extra)  # the same file layout
    assert_same_sharpness(sharp_one, out, ("eigenvalues", "trace", "trace_stderr", "grad_norm", "noise/trace_sigma",
                                           "noise/trace_h_sigma", "stability/sgd_lambda_max"))
    info = json.loads(load_result(out).extra["info"])
    assert info["samples"] == SHARP["subset"] and info["hvp_method"] == SHARP["hvp"]


def test_killed_data_parallel_sharpness_resumes_from_its_stages(ckpt, sharp_one, tmp_path):
    import h5py

    out = tmp_path / "sharpness.h5"
    partial = Path(f"{out}.partial")
    args = ("sharpness", str(ckpt), "-o", str(out), *SHARP_ARGS, *DATA[-2:])
    # Rank 0 SIGKILLs itself once the point and the eigenvalues are stored (2 stages).
    assert torchrun(*args, env={"LANDSCAPE_TEST_STOP_AFTER": "2"}).returncode != 0
    assert partial.exists() and not out.exists()
    stored = load_result(partial).extra
    assert "eigenvalues" in stored and "trace" not in stored
    # Mark the stored eigenvalues: a resumed run keeps them (rank 0 hands what it read to
    # rank 1, which would otherwise run a Lanczos of its own, out of step with rank 0).
    with h5py.File(partial, "r+") as h5:
        h5["eigenvalues"][...] = h5["eigenvalues"][...] * 2
    ok(torchrun(*args))
    assert out.exists() and not partial.exists()
    done = load_result(out)
    np.testing.assert_array_equal(done.extra["eigenvalues"], stored["eigenvalues"] * 2)
    assert_same_sharpness(sharp_one, out, ("trace", "trace_stderr", "grad_norm"))  # (no --noise here)


def json_objects(text: str) -> list:
    """The JSON documents printed one after another (one per rank)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while text[i:].strip():
        i = len(text) - len(text[i:].lstrip())
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
    return out


def test_compare_under_torchrun_keeps_ranks_in_step(tmp_path):
    """Training (DDP) and the sharpness column (data-parallel) on both ranks, files by rank 0."""
    out = tmp_path / "cmp"
    result = torchrun("compare", "--optimizer", "sgd", "--seeds", "2", "--epochs", "1", "--batch-size", "64", *DATA,
                      "--sharpness", "--sharpness-subset", "64", "--out", str(out), "--json")
    ok(result)
    printed = json_objects(result.stdout)
    assert len(printed) == 2 and printed[0] == printed[1]  # one plan, the same numbers everywhere
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.h5", "compare.json", "seed_0", "seed_1",
                                                     "sharpness.json"]
    assert not any(p.name.endswith((".tmp", ".partial")) for p in out.rglob("*"))
    (row,) = printed[0]["rows"]
    cached = sorted(json.loads((out / "sharpness.json").read_text()).values())
    assert sorted(row["sharpness"]["per_seed"]) == cached and all(np.isfinite(cached))
    for seed, acc in zip((0, 1), row["test_acc"]["per_seed"]):
        last = json.loads((out / f"seed_{seed}" / "sgd" / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["test_acc"] == acc


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
    t = torch.tensor([1.5, 2.0])
    assert torch.equal(distributed.all_reduce_tensor(t, op="min"), t) and distributed.all_reduce_tensor(t) is not t
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

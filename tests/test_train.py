"""The trainer against numbers derived independently of it.

Small MNIST-1D runs (a few hundred samples, a few epochs) keep this file fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from landscape.checkpoint import load_checkpoint
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.models import build_model
from landscape.train import TrainConfig, train

SMALL = {"num_train": 384, "num_test": 256}
STEPS_PER_EPOCH = 6  # 384 / 64


def small_config(**overrides) -> TrainConfig:
    base = dict(data_options=dict(SMALL), batch_size=64, epochs=4, device="cpu", seed=3, lr=0.05)
    base.update(overrides)
    return TrainConfig(**base)


def params(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in ckpt.state_dict.items() if k in names}


def flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([v.double().flatten().numpy() for _, v in sorted(state.items())])


def test_run_directory_matches_design(tmp_path):
    results = train(small_config(optimizers=["sgd", "asgd"], save_every_steps=5), tmp_path / "run")
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["config"]["optimizers"] == ["sgd", "asgd"]
    for name in ("sgd", "asgd"):
        assert (run / name / "config.json").exists()
        lines = [json.loads(x) for x in (run / name / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
        for key in ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"):
            assert key in lines[-1]
        ckpts = sorted(p.name for p in (run / name / "checkpoints").glob("epoch_*.pt"))
        assert ckpts == [f"epoch_{e:04d}.pt" for e in range(5)]
        assert (run / name / "checkpoints" / "step_0000005.pt").exists()
        final = torch.load(run / name / "final.pt", weights_only=True)
        assert final["format"] == "landscape-checkpoint/1"
        assert final["model"]["name"] == "cnn1d" and final["data"]["name"] == "mnist1d"
        assert final["kind"] == "iterate" and final["epoch"] == 4 and final["optimizer"] == name
    assert "averaged_test_acc" in [json.loads(x) for x in (run / "asgd" / "metrics.jsonl").read_text().splitlines()][-1]
    assert torch.load(run / "asgd" / "averaged.pt", weights_only=True)["kind"] == "averaged"
    assert not (run / "sgd" / "averaged.pt").exists()
    assert {r.name for r in results} == {"sgd", "asgd"}


def test_same_initialization_and_data_order_across_optimizers(tmp_path):
    run = tmp_path / "run"
    train(small_config(optimizers=["sgd", "sam", "lookahead"], epochs=1, save_every_steps=1), run)
    init = [flat(params(run / n / "checkpoints" / "epoch_0000.pt")) for n in ("sgd", "sam", "lookahead")]
    assert np.array_equal(init[0], init[1]) and np.array_equal(init[0], init[2])
    # Lookahead's first k-1 = 4 steps are plain SGD steps: identical only if the batches are.
    for step in range(1, 5):
        a = flat(params(run / "sgd" / "checkpoints" / f"step_{step:07d}.pt"))
        b = flat(params(run / "lookahead" / "checkpoints" / f"step_{step:07d}.pt"))
        np.testing.assert_array_equal(a, b)
    # SAM moves differently from the first step on.
    assert not np.array_equal(flat(params(run / "sgd" / "checkpoints" / "step_0000001.pt")),
                              flat(params(run / "sam" / "checkpoints" / "step_0000001.pt")))


@pytest.mark.parametrize("name,start_key", [("asgd", "avg_start"), ("swa", "swa_start")])
def test_uniform_average_is_mean_of_saved_iterates(tmp_path, name, start_key):
    run = tmp_path / "run"
    train(small_config(optimizers=[name], epochs=5, **{start_key: 3}), run)
    iterates = [params(run / name / "checkpoints" / f"epoch_{e:04d}.pt") for e in (3, 4, 5)]
    averaged = params(run / name / "averaged.pt")
    expected = np.mean([flat(s) for s in iterates], axis=0)
    np.testing.assert_allclose(flat(averaged), expected, rtol=1e-5, atol=1e-7)
    # ... and what torch.optim.swa_utils.AveragedModel makes of the same trajectory.
    ckpt = load_checkpoint(run / name / "averaged.pt")
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    reference = AveragedModel(model)
    for state in iterates:
        model.load_state_dict(state, strict=False)
        reference.update_parameters(model)
    ref = {k: p.detach() for k, p in reference.module.named_parameters()}
    np.testing.assert_allclose(flat(averaged), flat(ref), rtol=1e-6, atol=1e-7)


def test_averaging_every_step_matches_step_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(small_config(optimizers=["asgd"], epochs=2, avg_start=2, avg_every="step", save_every_steps=1), run)
    steps = range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1)
    expected = np.mean([flat(params(run / "asgd" / "checkpoints" / f"step_{s:07d}.pt")) for s in steps], axis=0)
    np.testing.assert_allclose(flat(params(run / "asgd" / "averaged.pt")), expected, rtol=1e-5, atol=1e-7)


def test_phase_wise_average_is_kobayashi_closed_form(tmp_path):
    """Eq. (3): theta_bar = (1-g)/(1-g^T) sum_t g^(T-t) theta_t with g = 0.9^(80/T)."""
    run = tmp_path / "run"
    train(small_config(optimizers=["phase"], epochs=7, phases="4:0.05,3:0.005",
                       save_every_steps=STEPS_PER_EPOCH), run)

    def iterate(epoch: int) -> np.ndarray:  # the SGD iterate at the end of `epoch`, before aggregation
        return flat(params(run / "phase" / "checkpoints" / f"step_{epoch * STEPS_PER_EPOCH:07d}.pt"))

    def closed_form(epochs: list[int]) -> np.ndarray:
        T = len(epochs)
        g = 0.9 ** (80 / T)
        weights = [(1 - g) / (1 - g**T) * g ** (T - t) for t in range(1, T + 1)]
        return sum(w * iterate(e) for w, e in zip(weights, epochs))

    # End of phase 1: the live model was replaced by the average ...
    np.testing.assert_allclose(flat(params(run / "phase" / "checkpoints" / "epoch_0004.pt")),
                               closed_form([1, 2, 3, 4]), rtol=1e-5, atol=1e-6)
    # ... and phase 2 started from it; its own average (T = 3) is the output.
    np.testing.assert_allclose(flat(params(run / "phase" / "averaged.pt")), closed_form([5, 6, 7]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(params(run / "phase" / "final.pt")), closed_form([5, 6, 7]),
                               rtol=1e-5, atol=1e-6)


def test_averaged_model_gets_batchnorm_recomputed(tmp_path):
    run = tmp_path / "run"
    train(small_config(optimizers=["swa"], epochs=3, swa_start=2, model_options={"bn": True}), run)
    ckpt = load_checkpoint(run / "swa" / "averaged.pt")
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    model.load_state_dict(ckpt.state_dict)
    data = load_dataset("mnist1d", **SMALL)
    update_bn([data.train.x[i : i + 512] for i in range(0, len(data.train), 512)], model)
    for key, value in model.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(ckpt.state_dict[key], value, rtol=1e-5, atol=1e-6)


def _assert_same_run(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        for rel in ["final.pt", "checkpoints/epoch_0003.pt"] + (["averaged.pt"] if name == "swa" else []):
            sa, sb = torch.load(a / name / rel, weights_only=True), torch.load(b / name / rel, weights_only=True)
            for key in sa["state_dict"]:
                assert torch.equal(sa["state_dict"][key], sb["state_dict"][key]), (name, rel, key)
        assert (a / name / "metrics.jsonl").read_text() == (b / name / "metrics.jsonl").read_text()


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    names = ["sam", "swa"]
    cfg = small_config(optimizers=names, epochs=4, swa_start=2, save_every_steps=4)
    train(cfg, tmp_path / "whole")

    def interrupt(event):
        if event.get("optimizer") == "swa" and event.get("epoch") == 3 and event.get("batch") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=interrupt)
    assert not (tmp_path / "cut" / "swa" / "final.pt").exists()
    train(cfg, tmp_path / "cut", resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", names)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = ["--optimizer", "sgd", "--optimizer", "asgd", "--epochs", "6", "--batch-size", "16",
            "--data-option", "num_train=384", "--data-option", "num_test=256", "--device", "cpu", "--seed", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "cli.main", "train"]
    subprocess.run(cli + args + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cli + args + ["--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "cut" / "asgd" / "checkpoints" / "epoch_0002.pt"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "asgd" / "final.pt").exists(), "the run finished before it could be killed"
    subprocess.run(cli + args + ["--out", str(tmp_path / "cut"), "--resume"], check=True, env=env,
                   capture_output=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", ["sgd", "asgd"])


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    train(small_config(epochs=1), run)
    before = (run / "sgd" / "final.pt").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train(small_config(epochs=1, lr=0.2), run)
    assert (run / "sgd" / "final.pt").read_bytes() == before
    with pytest.raises(UserError, match="different settings"):
        train(small_config(epochs=1, lr=0.2), run, resume=True)
    assert (run / "sgd" / "final.pt").read_bytes() == before


@pytest.mark.parametrize("overrides,message", [
    (dict(optimizers=["adamw"]), "unknown optimizer"),
    (dict(phases="3:0.1,x"), "phases"),
    (dict(phases="2:0.1,1:0.01"), "covers 3 epochs"),
    (dict(epochs=0), "--epochs"),
    (dict(optimizers=["phase"], schedule="cosine"), "phase"),
    (dict(rho=-1.0), "--rho"),
])
def test_bad_config_is_a_user_error(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train(small_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "sgd").exists()


# ============================================================================ opt-in speed


def test_channels_last_takes_the_same_step(tmp_path, monkeypatch):
    from tests.test_data import _make_cifar10

    # One full-batch step of resnet20, so float32 reordering cannot compound over steps.
    _make_cifar10(tmp_path / "data", monkeypatch, per_batch=16, n_test=16)
    base = dict(dataset="cifar10", data_dir=str(tmp_path / "data"), model="resnet20", epochs=1, batch_size=80,
                device="cpu", seed=1, lr=0.05)
    train(TrainConfig(**base), tmp_path / "nchw")
    train(TrainConfig(**base, channels_last=True), tmp_path / "nhwc")
    init = params(tmp_path / "nchw" / "sgd" / "checkpoints" / "epoch_0000.pt")
    a, b = params(tmp_path / "nchw" / "sgd" / "final.pt"), params(tmp_path / "nhwc" / "sgd" / "final.pt")
    da, db = flat({k: a[k] - init[k] for k in init}), flat({k: b[k] - init[k] for k in init})
    # Not bit-identical: channels_last BatchNorm backward reduces in another order, and at a
    # random initialization on random images its mean subtractions cancel badly (both layouts
    # are 5e-4..1e-2 off a float64 gradient per tensor; measured 7.5e-3 between them on the
    # whole update). A permuted or mis-strided weight would be O(1).
    assert np.linalg.norm(db - da) / np.linalg.norm(da) < 5e-2
    assert all(b[k].is_contiguous() for k in b)  # checkpoints keep one layout whatever the training format


def test_bf16_step_is_an_autocast_forward_and_a_float32_update():
    from landscape.train import make_optimizer, train_step

    torch.manual_seed(0)
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40], channels=8)
    reference = build_model("cnn1d", num_classes=10, input_shape=[1, 40], channels=8)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    cfg = TrainConfig(lr=0.1)
    train_step("sgd", model, make_optimizer("sgd", model, cfg), x, y, bf16=True)

    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = reference(x)
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    sgd.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # and it is not the float32 step
    torch.manual_seed(0)
    plain = build_model("cnn1d", num_classes=10, input_shape=[1, 40], channels=8)
    train_step("sgd", plain, make_optimizer("sgd", plain, cfg), x, y)
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), model.parameters()))


def test_resume_of_a_run_made_before_a_setting_existed(tmp_path):
    run = tmp_path / "run"
    cfg = small_config(epochs=2)
    train(cfg, run, resume=False)
    record = json.loads((run / "config.json").read_text())
    del record["config"]["bf16"], record["config"]["channels_last"]
    (run / "config.json").write_text(json.dumps(record))
    train(cfg, run, resume=True)  # no "different settings" error

"""The trainer against numbers derived independently of it.

Small MNIST-1D runs (a few hundred samples, a few epochs) keep this file fast.
"""

from __future__ import annotations

import json
import math
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
    # Lookahead saves its slow weights: the initialization until the first sync at step k = 5,
    # where slow = init + alpha (fast_5 - init), and fast_5 is SGD's 5th iterate (the first 5
    # fast steps are plain SGD steps): equal only if the batches are.
    for step in range(1, 5):
        np.testing.assert_array_equal(flat(params(run / "lookahead" / "checkpoints" / f"step_{step:07d}.pt")),
                                      init[0])
    sgd5 = flat(params(run / "sgd" / "checkpoints" / "step_0000005.pt"))
    np.testing.assert_allclose(flat(params(run / "lookahead" / "checkpoints" / "step_0000005.pt")),
                               init[0] + 0.5 * (sgd5 - init[0]), rtol=1e-6, atol=1e-7)
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
    (dict(preset="smith2099"), "unknown preset"),
    (dict(eval_every=0), "--eval-every"),
    (dict(eval_train_samples=-5), "--eval-train-samples"),
    (dict(bn_data="test"), "--bn-data"),
    (dict(asam_scope="biases"), "--asam-scope"),
    (dict(schedule="step"), "--schedule"),
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

    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
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
    for key in ("bf16", "channels_last", "preset", "preset_applied", "asam_scope", "bn_data", "eval_every",
                "eval_train_samples"):
        del record["config"][key]
    (run / "config.json").write_text(json.dumps(record))
    train(cfg, run, resume=True)  # no "different settings" error


# ============================================================================ paper presets


def test_preset_fills_what_the_paper_fixes_and_explicit_values_win():
    cfg = TrainConfig(preset="nitanda2024", epochs=8).resolved()
    assert cfg.optimizers == ["asgd"]
    want = {"momentum": 0.0, "nesterov": False, "weight_decay": 5e-3, "schedule": "cosine", "avg_every": "step",
            "avg_start": 7, "bn_data": "augmented"}  # averaged from epoch 301 of 400 in the paper's code
    assert {k: getattr(cfg, k) for k in want} == want and cfg.preset_applied == want
    # an explicit value wins and is not recorded as the preset's
    mine = TrainConfig(preset="nitanda2024", epochs=8, momentum=0.9, optimizers=["sgd", "asgd"]).resolved()
    assert mine.momentum == 0.9 and "momentum" not in mine.preset_applied and mine.weight_decay == 5e-3
    assert mine.optimizers == ["sgd", "asgd"]
    assert mine.resolved() == mine  # resolving is idempotent, so --resume compares like with like

    assert TrainConfig(preset="izmailov2018", epochs=300).resolved().preset_applied == {
        "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "schedule": "linear", "swa_start": 161,
        "swa_lr": 0.05, "bn_data": "augmented"}
    assert TrainConfig(preset="foret2021").resolved().preset_applied == {
        "rho": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "schedule": "cosine"}
    assert TrainConfig(preset="kwon2021").resolved().preset_applied == {
        "rho": 0.5, "asam_eta": 0.0, "asam_scope": "weights", "momentum": 0.9, "nesterov": False,
        "weight_decay": 5e-4, "schedule": "cosine"}
    k = TrainConfig(preset="kobayashi2024", epochs=160).resolved()
    assert k.optimizers == ["phase"] and k.phases == "80:0.1,40:0.01,40:0.001" and k.gamma0 == 0.9
    assert (k.lookahead_k, k.lookahead_alpha, k.bn_data) == (5, 0.5, "augmented")
    # no preset: landscape's own defaults
    plain = TrainConfig().resolved()
    assert (plain.optimizers, plain.momentum, plain.weight_decay, plain.schedule, plain.asam_scope,
            plain.bn_data, plain.preset_applied) == (["sgd"], 0.9, 5e-4, "phases", "all", "plain", {})
    with pytest.raises(UserError, match="unknown preset"):
        TrainConfig(preset="smith2099").resolved()


def test_nitanda2024_preset_run_averages_every_step_of_the_last_quarter(tmp_path):
    run = tmp_path / "run"
    train(small_config(preset="nitanda2024", epochs=4, save_every_steps=1), run)
    record = json.loads((run / "config.json").read_text())
    assert record["preset"]["name"] == "nitanda2024" and record["preset"]["set"]["weight_decay"] == 5e-3
    assert json.loads((run / "asgd" / "config.json").read_text())["momentum"] == 0.0
    # int(0.75 * 4) + 1 = epoch 4: the running mean of the iterates after each of its 6 steps
    steps = range(3 * STEPS_PER_EPOCH + 1, 4 * STEPS_PER_EPOCH + 1)
    expected = np.mean([flat(params(run / "asgd" / "checkpoints" / f"step_{s:07d}.pt")) for s in steps], axis=0)
    np.testing.assert_allclose(flat(params(run / "asgd" / "averaged.pt")), expected, rtol=1e-5, atol=1e-7)
    # per-step cosine from lr = 0.05 to 0 over 24 steps; metrics record the epoch's last step
    lines = [json.loads(x) for x in (run / "asgd" / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        s = line["epoch"] * STEPS_PER_EPOCH - 1
        assert line["lr"] == pytest.approx(0.5 * 0.05 * (1 + math.cos(math.pi * s / 24)), rel=1e-12)
    assert "averaged_test_acc" in lines[-1] and "averaged_test_acc" not in lines[-2]


def _swa_code_lr(epoch0: int, lr: float, final: float, horizon: float) -> float:
    """timgaripov/swa train.py schedule(), written from its description."""
    t = epoch0 / horizon
    ratio = final / lr
    if t <= 0.5:
        return lr
    if t <= 0.9:
        return lr * (1 - (1 - ratio) * (t - 0.5) / 0.4)
    return lr * ratio


def test_izmailov2018_preset_run_follows_the_swa_code(tmp_path):
    run = tmp_path / "run"
    train(small_config(preset="izmailov2018", optimizers=["sgd", "swa"], epochs=10), run)
    swa_start = int(10 * 160 / 300) + 1  # 161 of 300 in the paper's commands
    for name, final, horizon in (("swa", 0.025, swa_start), ("sgd", 0.0005, 10)):
        lines = [json.loads(x) for x in (run / name / "metrics.jsonl").read_text().splitlines()]
        want = [0.025 if name == "swa" and e >= swa_start else _swa_code_lr(e - 1, 0.05, final, horizon)
                for e in range(1, 11)]
        np.testing.assert_allclose([x["lr"] for x in lines], want, rtol=1e-12, err_msg=name)
    iterates = [flat(params(run / "swa" / "checkpoints" / f"epoch_{e:04d}.pt")) for e in range(swa_start, 11)]
    np.testing.assert_allclose(flat(params(run / "swa" / "averaged.pt")), np.mean(iterates, axis=0),
                               rtol=1e-5, atol=1e-7)


def test_sam_presets_build_the_official_optimizers():
    from landscape.train import make_optimizer

    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40], bn=True)
    asam = make_optimizer("asam", model, TrainConfig(preset="kwon2021"))
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [(g["adaptive"], g["rho"], g["eta"], sorted(names[id(p)] for p in g["params"]))
                for g in asam.param_groups]
    assert [a for a, *_ in by_group] == [True, False] and all(r == 0.5 and e == 0.0 for _, r, e, _ in by_group)
    assert all("weight" in n for n in by_group[0][3]) and not any("weight" in n for n in by_group[1][3])
    assert any(n.endswith("bias") for n in by_group[1][3])
    default = make_optimizer("asam", model, TrainConfig())
    assert len(default.param_groups) == 1 and default.param_groups[0]["adaptive"]
    sam = make_optimizer("sam", model, TrainConfig(preset="foret2021"))
    g = sam.param_groups[0]
    assert (g["rho"], g["nesterov"], g["momentum"], g["weight_decay"]) == (0.05, True, 0.9, 1e-3)


# ============================================================================ Lookahead's iterate


def test_lookahead_saves_and_scores_its_slow_weights(tmp_path):
    import torch.nn.functional as F

    run = tmp_path / "run"
    train(small_config(optimizers=["lookahead"], epochs=2), run)  # 6 steps per epoch, k = 5
    resume = torch.load(run / "lookahead" / "resume.pt", weights_only=True)
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40])
    slow = {n: resume["optimizer"]["slow"][i] for i, (n, _) in enumerate(model.named_parameters())}
    final = params(run / "lookahead" / "final.pt")
    # 12 steps: synced at step 10, then 2 fast steps: slow and fast differ, final.pt is slow
    for n in slow:
        assert torch.equal(final[n], slow[n]), n
    assert not all(torch.equal(final[n], resume["model"][n]) for n in slow)
    assert "slow weights" in json.loads((run / "lookahead" / "config.json").read_text())["iterate"]
    # metrics score the saved weights: recompute the last line's numbers from final.pt
    model.load_state_dict(load_checkpoint(run / "lookahead" / "final.pt").state_dict)
    model.eval()
    data = load_dataset("mnist1d", **SMALL)
    last = json.loads((run / "lookahead" / "metrics.jsonl").read_text().splitlines()[-1])
    with torch.no_grad():
        for split, key in ((data.test, "test"), (data.train, "train")):
            logits = model(split.x)
            assert last[f"{key}_loss"] == pytest.approx(F.cross_entropy(logits.double(), split.y).item(), rel=1e-5)
            assert last[f"{key}_acc"] == pytest.approx((logits.argmax(1) == split.y).double().mean().item())


# ============================================================================ evaluation schedule


def test_eval_every_and_the_fixed_train_subset(tmp_path):
    import torch.nn.functional as F

    run = tmp_path / "run"
    train(small_config(optimizers=["sgd", "swa"], epochs=4, swa_start=2, eval_every=2, eval_train_samples=100), run)
    subset = torch.randperm(384, generator=torch.Generator().manual_seed(3 + 0x5EED0E7A))[:100].sort().values
    data = load_dataset("mnist1d", **SMALL)
    for name in ("sgd", "swa"):
        record = json.loads((run / name / "config.json").read_text())["evaluation"]
        assert record["train_indices"] == subset.tolist() and record["train_samples"] == 100
        lines = [json.loads(x) for x in (run / name / "metrics.jsonl").read_text().splitlines()]
        assert [x.get("train_scored") for x in lines] == [None, 100, None, 384]  # last epoch: whole split
        assert all(x["test_scored"] == 256 and "test_loss" in x for x in lines)
        if name == "swa":
            assert ["averaged_test_loss" in x for x in lines] == [False, True, False, True]
    # epoch 2's train numbers are those of epoch_0002.pt on exactly those samples
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40])
    model.load_state_dict(load_checkpoint(run / "sgd" / "checkpoints" / "epoch_0002.pt").state_dict)
    model.eval()
    line = json.loads((run / "sgd" / "metrics.jsonl").read_text().splitlines()[1])
    with torch.no_grad():
        logits = model(data.train.x[subset])
    assert line["train_loss"] == pytest.approx(F.cross_entropy(logits.double(), data.train.y[subset]).item(), rel=1e-5)
    # default: as many train samples as the test split has
    train(small_config(epochs=1), tmp_path / "default")
    record = json.loads((tmp_path / "default" / "sgd" / "config.json").read_text())["evaluation"]
    assert record["train_samples"] == 256 and len(record["train_indices"]) == 256
    assert record["batch_size"] == 128  # the CPU's scoring batch when none is given


# ============================================================================ BatchNorm data


def _cifar_config(tmp_path, monkeypatch, **overrides) -> TrainConfig:
    from tests.test_data import _make_cifar10

    if not (tmp_path / "data").exists():
        _make_cifar10(tmp_path / "data", monkeypatch, per_batch=8, n_test=8)
    # The smallest image model with BatchNorm (a 10-layer WRN of width 1): 40 images, 2 steps an epoch.
    base = dict(dataset="cifar10", data_dir=str(tmp_path / "data"), model="wrn-10-1",
                optimizers=["swa"], epochs=3, swa_start=2, batch_size=20, device="cpu", seed=1, lr=0.05)
    base.update(overrides)
    return TrainConfig(**base)


def test_augmented_bn_data_is_the_seeded_augmentation_stream(tmp_path, monkeypatch):
    from landscape.data import augment

    run = tmp_path / "aug"
    train(_cifar_config(tmp_path, monkeypatch, bn_data="augmented"), run)
    ckpt = load_checkpoint(run / "swa" / "averaged.pt")
    data = load_dataset("cifar10", data_dir=tmp_path / "data")
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    model.load_state_dict(ckpt.state_dict)

    def stats(batches) -> dict[str, torch.Tensor]:
        update_bn(batches, model)
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    # The documented stream: the train split in order, batches of 512, crop+flip drawn from a
    # generator seeded with (seed * 1_000_003 + epoch) * 4 + 0 + 0x5EED0B17 (epoch 3, seed 1).
    gen = torch.Generator().manual_seed((1 * 1_000_003 + 3) * 4 + 0x5EED0B17)
    augmented = stats([augment(data.train.x[i:i + 512], "crop+flip", gen) for i in range(0, len(data.train), 512)])
    plain = stats([data.train.x[i:i + 512] for i in range(0, len(data.train), 512)])
    for key, value in augmented.items():
        torch.testing.assert_close(ckpt.state_dict[key], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(augmented[k], plain[k]) for k in plain)
    # the training itself is untouched: same iterates as with bn_data="plain"
    train(_cifar_config(tmp_path, monkeypatch, bn_data="plain"), tmp_path / "plain")
    a, b = params(run / "swa" / "final.pt"), params(tmp_path / "plain" / "swa" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_augmented_bn_and_thinned_evaluation_is_bit_identical(tmp_path, monkeypatch):
    names = ["swa", "phase"]
    cfg = _cifar_config(tmp_path, monkeypatch, optimizers=names, epochs=4, phases="2:0.05,2:0.005",
                        bn_data="augmented", eval_every=2, eval_train_samples=10)
    train(cfg, tmp_path / "whole")

    def interrupt(event):
        if event.get("optimizer") == "phase" and event.get("epoch") == 4 and event.get("batch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=interrupt)
    train(cfg, tmp_path / "cut", resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", names)
    for name in names:
        a = torch.load(tmp_path / "whole" / name / "averaged.pt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "cut" / name / "averaged.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name

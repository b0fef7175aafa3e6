"""The phase-wise paper's figures one option away (--phase, --layer last), loss-landscape's PCA
recipe, and stored directions; each checked against numpy or plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.analyses import AnalysisOptions, rays, segments, surface, trajectory, twopoint
from landscape.analyses import common
from landscape.checkpoint import load_checkpoint
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate
from landscape.models import build_model
from landscape.store import load_result
from landscape.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = {"num_train": 256, "num_test": 128}
OPTS = dict(device="cpu", batch_size=512, splits=("test",))
MODEL = {"channels": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """sgd, 12 epochs in LR phases of 8, 2 and 2 epochs, a checkpoint every 5 steps."""
    out = tmp_path_factory.mktemp("phases") / "run"
    train(TrainConfig(data_options=dict(SMALL), model_options=dict(MODEL), batch_size=64, epochs=12,
                      phases="8:0.1,2:0.01,2:0.001", save_every_steps=5, device="cpu", seed=3), out)
    return out / "sgd"


def epoch_file(run, e: int):
    return run / "checkpoints" / f"epoch_{e:04d}.pt"


def flat(path, names) -> np.ndarray:
    state = load_checkpoint(path).state_dict
    return np.concatenate([state[n].double().flatten().numpy() for n in names])


def test_segments_phase_1_takes_the_papers_anchors(run, tmp_path):
    result = load_result(segments(run, tmp_path / "s.h5", points=2, opts=AnalysisOptions(**OPTS), phase=1))
    # Fig. 2: theta_1, theta_20, theta_40, theta_60, theta_80 of an 80-epoch phase: here T = 8.
    assert list(result.coords["epoch"]) == [1, 2, 4, 6, 8]
    with pytest.raises(UserError, match="3 LR phases"):
        segments(run, tmp_path / "s4.h5", points=2, opts=AnalysisOptions(**OPTS), phase=4)
    with pytest.raises(UserError, match="not both"):
        segments(run, tmp_path / "s5.h5", [1, 2], opts=AnalysisOptions(**OPTS), phase=1)


def test_twopoint_phase_1_averages_with_the_end_of_phase_1(run, tmp_path):
    result = load_result(twopoint(run, tmp_path / "t.h5", opts=AnalysisOptions(**OPTS), phase=1))
    assert result.attrs["ref_epoch"] == 8
    assert list(result.extra["interval_epochs"][result.extra["granularity"] == "epoch"]) == list(range(1, 9))
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40], **MODEL)
    a, b = load_checkpoint(epoch_file(run, 8)).state_dict, load_checkpoint(epoch_file(run, 0)).state_dict
    model.load_state_dict({k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a})
    test = load_dataset("mnist1d", **SMALL).test
    expected, _ = evaluate(model, test.x, test.y)
    last = list(result.coords["interval"]).index(8 * 4)  # 256 samples / 64 = 4 steps per epoch
    assert result.metrics["test"]["loss"][last] == pytest.approx(expected, rel=1e-5)


def test_trajectory_of_one_phase_of_the_last_linear_layer(run, tmp_path):
    result = load_result(trajectory(run, tmp_path / "tr.h5", layer="last", opts=AnalysisOptions(**OPTS), phase=2))
    assert list(result.coords["epoch"]) == [8, 9, 10]  # phase 2 (epochs 9, 10) from where it started
    assert result.attrs["layer"] == "fc"
    X = np.stack([flat(epoch_file(run, e), ["fc.weight", "fc.bias"]) for e in (8, 9, 10)])
    centered = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    got = result.extra["pca/coords"]
    for k in range(2):
        want = centered @ vt[k]
        np.testing.assert_allclose(got[:, k], np.sign(got[:, k] @ want) * want, rtol=1e-4, atol=1e-6)


def test_trajectory_loss_landscape_recipe(run, tmp_path):
    """setup_PCA_directions: PCA (mean-centered, as sklearn) of w_i - w_final; project_trajectory:
    coordinates of w_i - w_final, so the final point sits at the origin."""
    result = load_result(trajectory(run, tmp_path / "ll.h5", center="loss-landscape", opts=AnalysisOptions(**OPTS)))
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40], **MODEL)
    names = [n for n, _ in model.named_parameters()]
    X = np.stack([flat(epoch_file(run, e), names) for e in range(13)])
    D = X - X[-1]
    _, _, vt = np.linalg.svd(D - D.mean(axis=0), full_matrices=False)
    got = result.extra["pca/coords"]
    np.testing.assert_allclose(got[-1], 0.0, atol=1e-6)
    for k in range(2):
        want = D @ vt[k]
        np.testing.assert_allclose(got[:, k], np.sign(got[:, k] @ want) * want, rtol=1e-4, atol=1e-5)


def test_surface_stores_the_directions_it_used(run, tmp_path):
    out = surface(run / "final.pt", tmp_path / "su.h5", np.array([-0.5, 0.5]), np.array([0.25]),
                  opts=AnalysisOptions(**OPTS))
    result = load_result(out)
    u, v = (torch.from_numpy(result.extra[f"directions/{d}"]) for d in "uv")
    ckpt = load_checkpoint(run / "final.pt")
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40], **MODEL)
    names = list(ckpt.state_dict)
    base = torch.cat([ckpt.state_dict[n].flatten().float() for n in names])
    point = base + 0.5 * u + 0.25 * v  # x = 0.5 (index 1), y = 0.25
    offset, state = 0, {}
    for n in names:
        t = ckpt.state_dict[n]
        state[n] = point[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    model.load_state_dict(state)
    test = load_dataset("mnist1d", **SMALL).test
    expected, _ = evaluate(model, test.x, test.y)
    assert result.metrics["test"]["loss"][0, 1] == pytest.approx(expected, rel=1e-5)
    # filter-normalized: every filter of u has the norm of the same filter of the weights
    w = ckpt.state_dict["features.0.weight"]
    uw = u[: w.numel()].view(w.shape)
    np.testing.assert_allclose(uw.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5)


def test_rays_store_directions_or_the_rule(run, tmp_path, monkeypatch):
    ckpts = [run / "final.pt", epoch_file(run, 4)]
    result = load_result(rays(ckpts, tmp_path / "r.h5", np.array([0.0, 1.0]), n_rays=3,
                              opts=AnalysisOptions(**OPTS)))
    d = result.extra["directions/rays"]
    assert d.shape[:2] == (2, 3)
    w = load_checkpoint(ckpts[1]).state_dict["features.0.weight"]
    np.testing.assert_allclose(np.linalg.norm(d[1, 2, : w.numel()].reshape(w.shape[0], -1), axis=1),
                               w.flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    monkeypatch.setattr(common, "DIRECTIONS_LIMIT_BYTES", 16)
    small = load_result(rays(ckpts, tmp_path / "r2.h5", np.array([0.0, 1.0]), n_rays=3,
                             opts=AnalysisOptions(**OPTS)))
    assert "directions/rays" not in small.extra and "ray_directions" in str(small.extra["directions/not_stored"])

"""Each analysis against numbers computed independently of the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from landscape.analyses import AnalysisOptions, interpolate, rays, segments, surface, trajectory, twopoint
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate
from landscape.models import build_model
from landscape.store import load_result
from landscape.train import TrainConfig, train

SMALL = {"num_train": 384, "num_test": 256}
OPTS = dict(device="cpu", batch_size=512)
# The linear model's factory lives in this test module: a checkpoint naming it is only read
# when the caller names it too (reading a file never imports code).
LINEAR = dict(OPTS, model="tests.test_analyses:linear_logits")


class LinearLogits(torch.nn.Module):
    """Logits z = A w that ignore the input, so the mean cross-entropy has a closed form:
    L(w) = logsumexp(A w) - sum_c p_c (A w)_c, with p the split's label frequencies."""

    def __init__(self, num_classes: int = 10, input_shape=None, dim: int = 6):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(dim))
        self.register_buffer("A", torch.linspace(-1, 1, num_classes * dim).reshape(num_classes, dim).sin())

    def forward(self, x):
        return (self.A @ self.w).expand(x.shape[0], -1)


def linear_logits(num_classes: int, input_shape, dim: int = 6) -> torch.nn.Module:
    return LinearLogits(num_classes, input_shape, dim)


def closed_form_loss(w: np.ndarray, A: np.ndarray, labels: np.ndarray) -> float:
    z = A @ w
    p = np.bincount(labels, minlength=A.shape[0]) / len(labels)
    return float(logsumexp(z) - p @ z)


def save_linear(path, w) -> None:
    model = LinearLogits()
    model.w.data = torch.as_tensor(w, dtype=torch.float32)
    save_checkpoint(path, model, model_spec={"name": "tests.test_analyses:linear_logits",
                                             "kwargs": {"num_classes": 10, "input_shape": [1, 40]}},
                    data_spec={"name": "mnist1d", **SMALL}, epoch=0, step=0, lr=0.1, optimizer="sgd")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data_options=dict(SMALL), batch_size=64, epochs=4, device="cpu", optimizers=["sgd", "swa"],
                      swa_start=3, save_every_steps=2, seed=1), out)
    return out


def direct(path, split="test") -> tuple[float, float]:
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    model.load_state_dict(ckpt.state_dict)
    data = load_dataset(**ckpt.data)
    s = getattr(data, split)
    return evaluate(model, s.x, s.y)


def mean_model(paths, weights) -> tuple[float, float]:
    ckpts = [load_checkpoint(p) for p in paths]
    model = build_model(ckpts[0].model["name"], **ckpts[0].model["kwargs"])
    model.load_state_dict({k: sum(w * c.state_dict[k] for w, c in zip(weights, ckpts)) for k in ckpts[0].state_dict})
    data = load_dataset(**ckpts[0].data)
    return evaluate(model, data.test.x, data.test.y)


def test_interpolation_endpoints_equal_direct_evaluation(run, tmp_path):
    a, b = run / "sgd" / "final.pt", run / "swa" / "averaged.pt"
    out = interpolate(a, b, tmp_path / "line.h5", np.linspace(-0.5, 1.5, 9), AnalysisOptions(**OPTS))
    result = load_result(out)
    assert result.attrs["analysis"] == "interpolate" and result.done.all()
    alpha = result.coords["alpha"]
    for path, at in ((a, 0.0), (b, 1.0)):
        i = int(np.argmin(np.abs(alpha - at)))
        loss, acc = direct(path)
        assert result.metrics["test"]["loss"][i] == pytest.approx(loss, abs=1e-6)
        assert result.metrics["test"]["accuracy"][i] == pytest.approx(acc, abs=1e-9)
    wa, wb = (load_checkpoint(p).state_dict for p in (a, b))
    expected = np.sqrt(sum(float(((wb[k] - wa[k]).double() ** 2).sum()) for k in wa))
    assert float(result.extra["distance"]) == pytest.approx(expected, rel=1e-5)


def test_bf16_is_asked_for_recorded_and_part_of_the_identity(run, tmp_path):
    a, b = run / "sgd" / "final.pt", run / "swa" / "averaged.pt"
    out = interpolate(a, b, tmp_path / "line.h5", np.array([0.0, 1.0]), AnalysisOptions(**OPTS, bf16=True))
    result = load_result(out)
    assert result.attrs["precision"] == "bf16 autocast"
    ckpt = load_checkpoint(a)
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    model.load_state_dict(ckpt.state_dict)
    test = load_dataset(**ckpt.data).test
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(test.x)
    expected = torch.nn.functional.cross_entropy(logits.float(), test.y).item()
    assert result.metrics["test"]["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert result.metrics["test"]["loss"][0] != pytest.approx(direct(a)[0], rel=1e-6)  # not float32
    with pytest.raises(UserError):  # a float32 run does not continue or reuse a bf16 file
        interpolate(a, b, tmp_path / "line.h5", np.array([0.0, 1.0]), AnalysisOptions(**OPTS))


def test_interpolation_and_plane_match_closed_form(tmp_path):
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=6) for _ in range(3)]
    for i, w in enumerate(ws):
        save_linear(tmp_path / f"p{i}.pt", w)
    data = load_dataset("mnist1d", **SMALL)
    labels = data.train.y.numpy()
    A = LinearLogits().A.numpy().astype(np.float64)
    alphas = np.linspace(-1, 2, 7)
    line = load_result(interpolate(tmp_path / "p0.pt", tmp_path / "p1.pt", tmp_path / "l.h5", alphas,
                                   AnalysisOptions(splits=("train",), **LINEAR)))
    expected = [closed_form_loss((1 - t) * ws[0] + t * ws[1], A, labels) for t in alphas]
    np.testing.assert_allclose(line.metrics["train"]["loss"], expected, rtol=1e-5)

    plane = load_result(surface(tmp_path / "p0.pt", tmp_path / "s.h5", np.linspace(-1, 3, 5), np.linspace(-2, 2, 4),
                                through=(tmp_path / "p1.pt", tmp_path / "p2.pt"),
                                opts=AnalysisOptions(splits=("train",), **LINEAR)))
    u = (ws[1] - ws[0]) / np.linalg.norm(ws[1] - ws[0])
    c = ws[2] - ws[0]
    v = c - (c @ u) * u
    v /= np.linalg.norm(v)
    xs, ys = plane.coords["x"], plane.coords["y"]
    grid = plane.metrics["train"]["loss"]
    assert grid.shape == (len(ys), len(xs))  # non-square grid, (y, x) order
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            assert grid[iy, ix] == pytest.approx(closed_form_loss(ws[0] + x * u + y * v, A, labels), rel=1e-5)
    # The three models sit at their true pairwise distances in the plane's coordinates.
    xy = plane.extra["models/coords"]
    for i in range(3):
        for j in range(3):
            assert np.linalg.norm(xy[i] - xy[j]) == pytest.approx(np.linalg.norm(ws[i] - ws[j]), rel=1e-5, abs=1e-6)


def test_rays_start_at_the_checkpoint(run, tmp_path):
    ckpts = [run / "sgd" / "final.pt", run / "swa" / "averaged.pt"]
    result = load_result(rays(ckpts, tmp_path / "rays.h5", np.linspace(0, 1, 3), n_rays=2,
                              opts=AnalysisOptions(splits=("test",), **OPTS)))
    loss = result.metrics["test"]["loss"]
    assert loss.shape == (2, 2, 3)
    for c, path in enumerate(ckpts):
        np.testing.assert_allclose(loss[c, :, 0], direct(path)[0], rtol=1e-6)
    assert result.attrs["normalization"] == "filter"


def test_segments_meet_at_anchors(run, tmp_path):
    result = load_result(segments(run / "sgd", tmp_path / "seg.h5", [1, 2, 4], points=5,
                                  opts=AnalysisOptions(splits=("test",), **OPTS)))
    loss = result.metrics["test"]["loss"]
    assert loss.shape == (2, 5)
    assert loss[0, -1] == pytest.approx(loss[1, 0], abs=1e-7)
    assert loss[0, 0] == pytest.approx(direct(run / "sgd" / "checkpoints" / "epoch_0001.pt")[0], abs=1e-6)
    assert loss[1, -1] == pytest.approx(direct(run / "sgd" / "checkpoints" / "epoch_0004.pt")[0], abs=1e-6)


def test_twopoint_is_the_average_of_two_checkpoints(run, tmp_path):
    result = load_result(twopoint(run / "sgd", tmp_path / "tp.h5", ref=4,
                                  opts=AnalysisOptions(splits=("test",), **OPTS)))
    intervals = list(result.coords["interval"])
    per_epoch = 384 // 64
    assert intervals[0] == 0 and per_epoch in intervals and 2 in intervals  # steps and epochs
    ckpt = run / "sgd" / "checkpoints"
    loss = result.metrics["test"]["loss"]
    assert loss[0] == pytest.approx(direct(ckpt / "epoch_0004.pt")[0], abs=1e-6)
    i = intervals.index(per_epoch)
    assert loss[i] == pytest.approx(mean_model([ckpt / "epoch_0004.pt", ckpt / "epoch_0003.pt"], [0.5, 0.5])[0],
                                    abs=1e-5)
    i = intervals.index(2)
    step = 4 * per_epoch - 2
    assert loss[i] == pytest.approx(mean_model([ckpt / "epoch_0004.pt", ckpt / f"step_{step:07d}.pt"],
                                               [0.5, 0.5])[0], abs=1e-5)


def test_trajectory_pca_matches_numpy(run, tmp_path):
    result = load_result(trajectory(run / "sgd", tmp_path / "traj.h5", with_surface=True, grid_points=3,
                                    opts=AnalysisOptions(splits=("test",), **OPTS)))
    paths = sorted((run / "sgd" / "checkpoints").glob("epoch_*.pt"))
    model = build_model("cnn1d", num_classes=10, input_shape=[1, 40])
    names = [n for n, _ in model.named_parameters()]
    X = np.stack([np.concatenate([load_checkpoint(p).state_dict[n].double().flatten().numpy() for n in names])
                  for p in paths])
    centered = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    got = result.extra["pca/coords"]
    for k in range(2):
        sign = np.sign(got[:, k] @ coords[:, k])
        np.testing.assert_allclose(got[:, k], sign * coords[:, k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.extra["pca/explained_variance_ratio"], (s**2 / (s**2).sum())[:2], rtol=1e-5)
    d1 = result.extra["timedelay/d1"]
    np.testing.assert_allclose(d1[1:], np.linalg.norm(np.diff(X, axis=0), axis=1), rtol=1e-5)
    assert result.extra["surface/test/loss"].shape == (3, 3)
    assert result.metrics["test"]["loss"][-1] == pytest.approx(direct(paths[-1])[0], abs=1e-6)


def test_killed_analysis_resumes_to_the_same_file(run, tmp_path):
    a, b = run / "sgd" / "final.pt", run / "swa" / "averaged.pt"
    alphas = np.linspace(0, 1, 6)
    whole = load_result(interpolate(a, b, tmp_path / "whole.h5", alphas, AnalysisOptions(**OPTS)))
    calls = []

    def die_after_first_chunk(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interpolate(a, b, tmp_path / "cut.h5", alphas, AnalysisOptions(chunk=2, progress=die_after_first_chunk, **OPTS))
    assert not (tmp_path / "cut.h5").exists()
    seen = []
    cut = load_result(interpolate(a, b, tmp_path / "cut.h5", alphas,
                                  AnalysisOptions(chunk=2, progress=lambda d, t: seen.append(d), **OPTS)))
    assert seen[0] == 2  # resumed from the done mask, did not start over
    for split in ("train", "test"):
        for metric in ("loss", "accuracy"):
            np.testing.assert_array_equal(whole.metrics[split][metric], cut.metrics[split][metric])


def test_bad_inputs(run, tmp_path):
    a = run / "sgd" / "final.pt"
    opts = AnalysisOptions(**OPTS)
    with pytest.raises(UserError, match="no such file"):
        interpolate(a, tmp_path / "missing.pt", tmp_path / "x.h5", np.linspace(0, 1, 3), opts)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pt"):
        interpolate(a, tmp_path / "junk.pt", tmp_path / "x.h5", np.linspace(0, 1, 3), opts)
    save_linear(tmp_path / "lin.pt", np.zeros(6))
    with pytest.raises(UserError, match="name different models"):
        interpolate(a, tmp_path / "lin.pt", tmp_path / "x.h5", np.linspace(0, 1, 3), opts)
    segments(run / "sgd", tmp_path / "seg.h5", [1, 2], points=2, opts=opts)
    with pytest.raises(UserError, match="seg.h5"):
        interpolate(a, run / "swa" / "final.pt", tmp_path / "seg.h5", np.linspace(0, 1, 3), opts)
    with pytest.raises(UserError, match="epoch 9"):
        segments(run / "sgd", tmp_path / "s2.h5", [1, 9], opts=opts)

"""The evaluation engine against numbers computed independently of it.

* cnn1d: ``load_state_dict`` + ``landscape.evaluate.evaluate`` at the same point;
* BatchNorm models with bn="recompute": ``torch.optim.swa_utils.update_bn`` + ``evaluate``
  (the statistics' definition in detail: tests/test_batchnorm.py);
* a linear model whose cross-entropy is written out in numpy (float64, closed form);
* subsets: an independent ``randperm`` of the documented recipe.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from landscape.data import Dataset, Split, load_dataset
from landscape.engine import Engine, StateLayout, choose_strategy
from landscape.errors import UserError
from landscape.evaluate import evaluate
from landscape.models import build_model

SMALL = {"num_train": 384, "num_test": 256}
CNN = {"name": "cnn1d", "kwargs": {"num_classes": 10, "input_shape": [1, 40], "channels": 16}}


# ------------------------------------------------------------------ fixtures and user models


class LinearT(nn.Module):
    """logits = scale * (flatten(x) @ W.T + b): cross-entropy has a closed form.

    ``scale`` is a floating buffer (part of a point, role "buffer"), ``count`` an integer
    buffer (never part of a point, never touched).
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("count", torch.tensor(7, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.fc(x.flatten(1))


def linear_model(*, num_classes: int, input_shape) -> nn.Module:
    return LinearT(math.prod(input_shape), num_classes)


def small_bn_cnn(*, num_classes: int, input_shape) -> nn.Module:
    """A 2-D conv net with BatchNorm (exercises channels_last on CPU and BN recompute)."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_dataset("mnist1d", **SMALL)


@pytest.fixture(scope="module")
def images() -> Dataset:
    """A small image dataset (random, but with a class signal so losses vary)."""
    gen = torch.Generator().manual_seed(0)
    def split(n: int) -> Split:
        y = torch.randint(0, 5, (n,), generator=gen)
        x = torch.randn(n, 3, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float() * 0.3
        return Split(x, y)
    return Dataset("toy-images", split(200), split(120), 5, (3, 8, 8), "none", {"name": "toy-images"})


def random_points(spec: dict, count: int, seed: int = 0, scale: float = 0.0) -> tuple[StateLayout, torch.Tensor]:
    """Points from independent initializations (plus Gaussian noise of ``scale``)."""
    points = []
    for i in range(count):
        torch.manual_seed(seed + i)
        model = build_model(spec["name"], **spec["kwargs"])
        layout = StateLayout(model.state_dict(), model)
        p = layout.flatten(model.state_dict())
        points.append(p + scale * torch.randn(p.shape))
    return layout, torch.stack(points)


def reference(spec: dict, layout: StateLayout, point: torch.Tensor, split: Split, batch_size: int = 64):
    model = build_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(layout.unflatten(point), strict=False)
    return evaluate(model, split.x, split.y, batch_size)


def perturbed_bn_state(spec: dict, data: Dataset, seed: int) -> dict[str, torch.Tensor]:
    """A state whose BN buffers are far from the recomputed ones (so recompute matters)."""
    torch.manual_seed(seed)
    model = build_model(spec["name"], **spec["kwargs"])
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 2)
            elif name.endswith("running_var"):
                b.uniform_(0.1, 5)
    return model.state_dict()


# ------------------------------------------------------------------ engine vs evaluate


def test_cnn1d_matches_load_state_dict_and_evaluate(mnist1d):
    layout, points = random_points(CNN, 3, seed=1, scale=0.01)
    engine = Engine(CNN, mnist1d, strategy="loop", batch_size=100)
    got = engine.evaluate(points)
    for i, p in enumerate(points):
        for s in ("train", "test"):
            loss, acc = reference(CNN, layout, p, getattr(mnist1d, s))
            assert got[s]["loss"][i] == pytest.approx(loss, rel=1e-6, abs=1e-6)
            assert got[s]["accuracy"][i] == pytest.approx(acc, abs=1e-12)
    assert got["train"]["loss"].dtype == np.float64 and got["test"]["accuracy"].shape == (3,)


def test_bn_keep_matches_load_state_dict(images):
    spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
    sd = perturbed_bn_state(spec, images, 5)
    engine = Engine(spec, images, bn="keep", strategy="loop")
    got = engine.evaluate(engine.flatten(sd))
    model = build_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(sd)
    loss, acc = evaluate(model, images.test.x, images.test.y, 50)
    assert got["test"]["loss"][0] == pytest.approx(loss, rel=1e-6)
    assert got["test"]["accuracy"][0] == pytest.approx(acc)


# ------------------------------------------------------------------ strategies


@pytest.mark.parametrize("which", ["cnn1d", "mlp", "linear", "bn-keep"])
def test_loop_and_vmap_agree(mnist1d, images, which):
    data = mnist1d
    if which == "cnn1d":
        spec = CNN
    elif which == "mlp":
        spec = {"name": "mlp", "kwargs": {"num_classes": 10, "input_shape": [1, 40], "widths": [32, 16]}}
    elif which == "linear":
        spec = {"name": "tests.test_engine:linear_model", "kwargs": {"num_classes": 10, "input_shape": [1, 40]}}
    else:
        spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
        data = images
    _, points = random_points(spec, 5, seed=11, scale=0.05)
    loop = Engine(spec, data, strategy="loop", bn="keep", batch_size=128)
    vmap = Engine(spec, data, strategy="vmap", bn="keep", batch_size=128, memory_budget_gb=0.001)
    assert (loop.strategy, vmap.strategy) == ("loop", "vmap")
    a, b = loop.evaluate(points), vmap.evaluate(points)
    for s in ("train", "test"):
        np.testing.assert_allclose(a[s]["loss"], b[s]["loss"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a[s]["accuracy"], b[s]["accuracy"], atol=1.5 / len(getattr(data, s)))


def test_auto_strategy_rule(mnist1d, images):
    cpu = torch.device("cpu")
    assert choose_strategy(cpu, recompute_bn=True) == "loop"
    assert choose_strategy(torch.device("cuda"), recompute_bn=True) == "vmap"
    assert choose_strategy(torch.device("cuda"), recompute_bn=False) == "vmap"
    assert choose_strategy(cpu, recompute_bn=False) == "loop"
    assert Engine(CNN, mnist1d).strategy == "loop"
    spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
    assert Engine(spec, images, strategy="vmap", bn="recompute").strategy == "vmap"

    class DataDependent(nn.Module):  # Python control flow on a per-point value: vmap cannot batch it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(40, 10)

        def forward(self, x):
            out = self.fc(x.flatten(1))
            return out if float(self.fc.weight.sum()) > -1e9 else -out

    with pytest.raises(UserError, match="vmap strategy"):
        Engine(DataDependent(), mnist1d, strategy="vmap", bn="keep")


# ------------------------------------------------------------------ closed form


def numpy_ce(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, scale: float) -> tuple[float, float]:
    logits = scale * (x.reshape(len(x), -1).astype(np.float64) @ w.T.astype(np.float64) + b.astype(np.float64))
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    loss = float(np.mean(lse - logits[np.arange(len(y)), y]))
    acc = float(np.mean(logits.argmax(axis=1) == y))
    return loss, acc


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_linear_model_closed_form(mnist1d, strategy):
    spec = {"name": "tests.test_engine:linear_model", "kwargs": {"num_classes": 10, "input_shape": [1, 40]}}
    engine = Engine(spec, mnist1d, strategy=strategy, batch_size=100)
    layout = engine.layout
    # state_dict order: a module's own tensors, then its children's.
    assert [(e.name, e.role) for e in layout.entries] == [
        ("scale", "buffer"), ("fc.weight", "weight"), ("fc.bias", "bias")]
    assert list(layout.integer_state) == ["count"]
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.normal(0, 0.3, (4, layout.dim)).astype(np.float32))
    points[:, layout["scale"].offset] = torch.tensor([1.0, 0.5, 2.0, -1.0])
    got = engine.evaluate(points)
    for i, p in enumerate(points.numpy()):
        w = p[layout["fc.weight"].slice].reshape(10, 40)
        b, scale = p[layout["fc.bias"].slice], float(p[layout["scale"].offset])
        for s in ("train", "test"):
            split = getattr(mnist1d, s)
            loss, acc = numpy_ce(split.x.numpy(), split.y.numpy(), w, b, scale)
            assert got[s]["loss"][i] == pytest.approx(loss, rel=2e-6)
            assert got[s]["accuracy"][i] == pytest.approx(acc)


def test_subset_is_fixed_and_seeded(mnist1d):
    spec = {"name": "tests.test_engine:linear_model", "kwargs": {"num_classes": 10, "input_shape": [1, 40]}}
    rng = np.random.default_rng(1)
    points = torch.from_numpy(rng.normal(0, 0.3, (2, 411)).astype(np.float32))
    points[:, 0] = 1.0  # the "scale" buffer comes first in state_dict order
    a = Engine(spec, mnist1d, subset=100, seed=5).evaluate(points)
    b = Engine(spec, mnist1d, subset=100, seed=5).evaluate(points)
    c = Engine(spec, mnist1d, subset=100, seed=6).evaluate(points)
    big = Engine(spec, mnist1d, subset=10_000, seed=5)  # capped at the split size: whole split
    assert big.sizes == {"train": 384, "test": 256}
    for s in ("train", "test"):
        np.testing.assert_array_equal(a[s]["loss"], b[s]["loss"])
        assert not np.allclose(a[s]["loss"], c[s]["loss"])
        # Independent recipe: randperm(len, Generator(seed))[:n], sorted.
        split = getattr(mnist1d, s)
        idx = np.sort(torch.randperm(len(split), generator=torch.Generator().manual_seed(5))[:100].numpy())
        p = points[0].numpy()
        loss, acc = numpy_ce(split.x.numpy()[idx], split.y.numpy()[idx], p[1:401].reshape(10, 40), p[401:411], 1.0)
        assert a[s]["loss"][0] == pytest.approx(loss, rel=2e-6)
        assert a[s]["accuracy"][0] == pytest.approx(acc)


# ------------------------------------------------------------------ divergence, integer buffers


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_nan_and_inf_points_are_recorded(mnist1d, strategy):
    layout, points = random_points(CNN, 4, seed=2)
    points[1, 5] = float("nan")
    points[2, :] = points[2] * 1e30  # overflows to inf/nan logits
    got = Engine(CNN, mnist1d, strategy=strategy, bn="keep").evaluate(points)
    for s in ("train", "test"):
        loss = got[s]["loss"]
        assert np.isnan(loss[1])
        assert not np.isfinite(loss[2])
        assert np.isfinite(loss[0]) and np.isfinite(loss[3])
        assert loss[3] == pytest.approx(reference(CNN, layout, points[3], getattr(mnist1d, s))[0], rel=1e-6)


def test_nan_point_with_bn_recompute_does_not_poison_the_next(images):
    spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
    engine = Engine(spec, images, bn="recompute", batch_size=64)
    good = engine.flatten(perturbed_bn_state(spec, images, 0))
    bad = good.clone()
    bad[0] = float("nan")
    got = engine.evaluate(torch.stack([good, bad, good]))
    assert np.isnan(got["train"]["loss"][1])
    assert got["train"]["loss"][0] == got["train"]["loss"][2]


def test_integer_buffers_untouched(images):
    spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
    engine = Engine(spec, images, bn="recompute", batch_size=64)
    assert set(engine.layout.integer_state) == {"1.num_batches_tracked", "4.num_batches_tracked"}
    assert all(e.name not in engine.layout.integer_state for e in engine.layout.entries)
    before = {k: v.clone() for k, v in engine.model.state_dict().items() if not v.is_floating_point()}
    engine.evaluate(engine.flatten(perturbed_bn_state(spec, images, 0)))
    after = {k: v for k, v in engine.model.state_dict().items() if not v.is_floating_point()}
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k])
    # A point never carries integer buffers: a state_dict without them still flattens.
    sd = {k: v for k, v in perturbed_bn_state(spec, images, 1).items() if v.is_floating_point()}
    assert engine.flatten(sd).shape == (engine.layout.dim,)


def test_evaluate_chunks_cover_all_points(mnist1d):
    _, points = random_points(CNN, 5, seed=4)
    engine = Engine(CNN, mnist1d, splits=("test",), bn="keep")
    whole = engine.evaluate(points)
    seen = []
    for idx, res in engine.evaluate_chunks(points, chunk=2):
        seen.extend(idx.tolist())
        np.testing.assert_array_equal(res["test"]["loss"], whole["test"]["loss"][idx])
        assert set(res) == {"test"}
    assert seen == list(range(5))


# ------------------------------------------------------------------ layout


def test_layout_roles_and_round_trip_resnet20():
    model = build_model("resnet20", num_classes=10, input_shape=[3, 32, 32])
    with torch.no_grad():  # non-trivial buffers so the round trip means something
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
    sd = model.state_dict()
    layout = StateLayout(sd, model)
    floating = {k: v for k, v in sd.items() if v.is_floating_point()}
    assert [e.name for e in layout.entries] == list(floating)
    assert layout.dim == sum(v.numel() for v in floating.values())
    assert set(layout.integer_state) == {k for k, v in sd.items() if not v.is_floating_point()}
    assert all(k.endswith("num_batches_tracked") for k in layout.integer_state)
    offset = 0
    for e in layout.entries:
        assert e.offset == offset and e.numel == math.prod(e.shape)
        offset += e.numel
    roles = {e.name: e.role for e in layout.entries}
    assert roles["conv.weight"] == "weight" and roles["fc.weight"] == "weight"
    assert roles["layer2.0.shortcut.0.weight"] == "weight"
    assert roles["fc.bias"] == "bias"
    assert roles["bn.weight"] == "bn" and roles["layer3.2.bn2.bias"] == "bn"
    assert roles["layer1.0.bn1.running_mean"] == "buffer" and roles["bn.running_var"] == "buffer"
    params = dict(model.named_parameters())
    for name, role in roles.items():
        if role == "buffer":
            assert name not in params
        elif role == "weight":
            assert params[name].dim() > 1
    # Names alone give the same roles for a BatchNorm net.
    assert {e.name: e.role for e in StateLayout(sd).entries} == roles
    # Round trip.
    vec = layout.flatten(sd)
    assert vec.dtype == torch.float32 and vec.shape == (layout.dim,)
    back = layout.unflatten(vec)
    assert list(back) == list(floating)
    for k, v in floating.items():
        assert torch.equal(back[k], v)
    # Masks partition the vector.
    masks = {r: layout.mask(r) for r in ("weight", "bias", "bn", "buffer")}
    assert sum(int(m.sum()) for m in masks.values()) == layout.dim
    assert int(layout.mask("weight", "bias").sum()) == int(masks["weight"].sum() + masks["bias"].sum())
    assert int(masks["bias"].sum()) == 10
    assert torch.equal(vec[masks["buffer"]], torch.cat([sd[e.name].reshape(-1) for e in layout.entries
                                                        if e.role == "buffer"]))


# ------------------------------------------------------------------ bad input


def test_bad_input_is_a_user_error(mnist1d):
    engine = Engine(CNN, mnist1d)
    other = build_model("cnn1d", num_classes=10, input_shape=[1, 40], channels=32).state_dict()
    with pytest.raises(UserError, match="shape"):
        engine.flatten(other)
    with pytest.raises(UserError, match="another architecture"):
        engine.flatten(build_model("mlp", num_classes=10, input_shape=[1, 40]).state_dict())
    sd = build_model("cnn1d", **CNN["kwargs"]).state_dict()
    sd.pop("fc.bias")
    with pytest.raises(UserError, match="missing"):
        engine.flatten(sd)
    with pytest.raises(UserError, match="entries"):
        engine.evaluate(torch.zeros(2, engine.layout.dim + 1))
    with pytest.raises(UserError, match="does not fit|input_shape"):
        Engine({"name": "resnet20", "kwargs": {"num_classes": 10, "input_shape": [3, 32, 32]}}, mnist1d)
    with pytest.raises(UserError, match="outputs"):
        Engine({"name": "cnn1d", "kwargs": {"num_classes": 7, "input_shape": [1, 40]}}, mnist1d)
    with pytest.raises(UserError):
        Engine({"name": "no-such-model", "kwargs": {}}, mnist1d)
    with pytest.raises(UserError):
        Engine("cnn1d", mnist1d)
    with pytest.raises(UserError, match="bn mode"):
        Engine(CNN, mnist1d, bn="frozen")
    with pytest.raises(UserError, match="strategy"):
        Engine(CNN, mnist1d, strategy="fast")
    with pytest.raises(UserError, match="splits"):
        Engine(CNN, mnist1d, splits=("val",))
    with pytest.raises(UserError, match="batch size"):
        Engine(CNN, mnist1d, batch_size=0)
    with pytest.raises(UserError, match="subset"):
        Engine(CNN, mnist1d, subset=0)


def test_scored_state_and_split_data(images):
    spec = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
    engine = Engine(spec, images, bn="recompute", batch_size=64, bn_batch=200, subset=100, seed=2)
    sd = perturbed_bn_state(spec, images, 0)
    state = engine.scored_state(engine.flatten(sd))
    train = engine.split_data("train")
    assert torch.equal(train.y, images.train.subset(100, 2).y)
    model = build_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(sd)
    # The statistics of the whole train split (one group of 200), not of the 100 scored samples:
    # what sharpness differentiates through.
    update_bn([images.train.x], model)
    expected = model.state_dict()
    assert list(state) == list(expected)
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6)
            assert state[k].is_contiguous() and not state[k].is_inference()
    with pytest.raises(UserError, match="split"):
        Engine(spec, images, splits=("test",), bn="keep").split_data("train")

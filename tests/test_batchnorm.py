"""BatchNorm statistics (``bn="recompute"``) against values computed independently of the engine.

* one group (``bn_batch`` >= the train split): ``torch.optim.swa_utils.update_bn`` over the
  whole train split as one batch, then plain ``evaluate`` on the scored subset;
* several groups: BatchNorm's own training-mode forward (``nn.BatchNorm`` in train mode) on
  the documented groups, each layer's inputs caught by a hook, concatenated and reduced in
  float64 (mean, unbiased variance), then plain ``evaluate``;
* ``bn_samples``: the subset drawn by an independent ``randperm`` of the documented recipe;
* the vmap strategy against the loop;
* the result file records where the statistics came from, and that is part of its identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from landscape.analyses import AnalysisOptions, interpolate
from landscape.analyses.common import engine_for
from landscape.batchnorm import BN_BATCH, group_bounds, recompute_statistics
from landscape.checkpoint import save_checkpoint
from landscape.data import Dataset
from landscape.engine import Engine
from landscape.errors import UserError
from landscape.evaluate import evaluate
from landscape.models import build_model
from landscape.store import load_result
from tests.test_engine import SMALL, images, mnist1d  # noqa: F401 (the same small datasets, as fixtures)

CNN_BN = {"name": "cnn1d", "kwargs": {"num_classes": 10, "input_shape": [1, 40], "channels": 16, "bn": True}}
IMG_BN = {"name": "tests.test_engine:small_bn_cnn", "kwargs": {"num_classes": 5, "input_shape": [3, 8, 8]}}
INPUT_BN = {"name": "tests.test_batchnorm:input_bn_net", "kwargs": {"num_classes": 10, "input_shape": [1, 40]}}

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def input_bn_net(*, num_classes: int, input_shape) -> nn.Module:
    """BatchNorm on the raw input (unbatched under vmap), a BatchNorm1d on (N, C) features, and
    a BatchNorm without affine parameters."""
    c, length = input_shape
    return nn.Sequential(
        nn.BatchNorm1d(c), nn.Conv1d(c, 8, 5), nn.BatchNorm1d(8, affine=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * (length - 4), 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))


def case(name: str, mnist1d: Dataset, images: Dataset) -> tuple[dict, Dataset]:
    return {"cnn1d-bn": (CNN_BN, mnist1d), "small_bn_cnn": (IMG_BN, images), "input-bn": (INPUT_BN, mnist1d)}[name]


def wrong_bn_state(spec: dict, seed: int) -> dict[str, torch.Tensor]:
    """Weights of one initialization, BatchNorm buffers far from any recomputed ones."""
    torch.manual_seed(seed)
    model = build_model(spec["name"], **spec["kwargs"])
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 2)
            elif name.endswith("running_var"):
                b.uniform_(0.1, 5)
    return model.state_dict()


def model_at(spec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    model = build_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(state)
    return model


def pooled_reference(spec: dict, state: dict[str, torch.Tensor], x: torch.Tensor, groups: int) -> nn.Module:
    """The documented definition, written plainly: nn.BatchNorm's own training-mode forward on
    ``torch.tensor_split(x, groups)``, each BatchNorm layer's input caught by a pre-hook, all of
    it concatenated in float64; running_mean/var = per-channel mean and unbiased variance."""
    model = model_at(spec, state)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(bns))}
    hooks = [m.register_forward_pre_hook(lambda _m, inp, i=i: seen[i].append(inp[0].detach().double()))
             for i, m in enumerate(bns)]
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        for xb in torch.tensor_split(x, groups):
            model(xb)
    for h in hooks:
        h.remove()
    model.eval()
    with torch.no_grad():
        for i, m in enumerate(bns):
            values = torch.cat(seen[i]).transpose(0, 1).reshape(m.num_features, -1)  # (C, all samples x positions)
            m.running_mean.copy_(values.mean(dim=1))
            m.running_var.copy_(values.var(dim=1, unbiased=True))
    return model


# ------------------------------------------------------------------ the definition


def test_groups_are_tensor_split_of_ceil_n_over_batch():
    for n, b in [(200, 64), (384, 128), (4000, 128), (2048, 128), (5, 2), (7, 100), (1, 128)]:
        sizes = [stop - start for start, stop in group_bounds(n, b)]
        expected = [len(t) for t in torch.tensor_split(torch.arange(n), -(-n // b))]
        assert sizes == expected and max(sizes) <= b
        assert group_bounds(n, b)[0][0] == 0 and group_bounds(n, b)[-1][1] == n


@pytest.mark.parametrize("name", ["cnn1d-bn", "small_bn_cnn"])
@pytest.mark.parametrize("subset", [None, 100])
def test_statistics_come_from_the_whole_train_split_not_the_subset(mnist1d, images, name, subset):
    """Issue #13, bug 1: with --subset N the statistics were those of the N scored samples.

    One group (bn_batch >= the train split), so the reference is update_bn itself: the whole
    train split as one batch, then evaluate on the scored subset."""
    spec, data = case(name, mnist1d, images)
    n_train = len(data.train)
    engine = Engine(spec, data, bn="recompute", bn_batch=n_train, subset=subset, seed=3, batch_size=64)
    states = [wrong_bn_state(spec, seed) for seed in (0, 1)]
    got = engine.evaluate(torch.stack([engine.flatten(sd) for sd in states]))
    for i, sd in enumerate(states):
        model = model_at(spec, sd)
        update_bn([data.train.x], model)
        for s in ("train", "test"):
            split = getattr(data, s) if subset is None else getattr(data, s).subset(subset, 3)
            loss, acc = evaluate(model, split.x, split.y, 1000)
            assert got[s]["loss"][i] == pytest.approx(loss, rel=2e-6)
            assert got[s]["accuracy"][i] == pytest.approx(acc, abs=1e-12)
    if subset is not None:  # what the old code computed (statistics of the scored subset) differs
        model = model_at(spec, states[0])
        update_bn([data.train.subset(subset, 3).x], model)
        split = data.test.subset(subset, 3)
        assert got["test"]["loss"][0] != pytest.approx(evaluate(model, split.x, split.y)[0], rel=1e-4)


@pytest.mark.parametrize("name", ["cnn1d-bn", "small_bn_cnn", "input-bn"])
def test_statistics_pool_every_group_exactly(mnist1d, images, name):
    """Several groups (uneven sizes): the exact pooled mean and unbiased variance of what each
    layer received, against BatchNorm's own training-mode forward reduced in float64."""
    spec, data = case(name, mnist1d, images)
    bn_batch = 60  # 384 -> 7 groups of 55/54, 200 -> 4 groups of 50
    engine = Engine(spec, data, bn="recompute", bn_batch=bn_batch, subset=90, seed=1, strategy="loop")
    state = wrong_bn_state(spec, 4)
    point = engine.flatten(state)
    model = pooled_reference(spec, state, data.train.x, -(-len(data.train) // bn_batch))
    scored = engine.scored_state(point)
    expected = model.state_dict()
    for k, v in expected.items():
        if "running" in k:
            torch.testing.assert_close(scored[k], v, rtol=2e-5, atol=2e-6)
        else:  # weights as given; integer buffers (num_batches_tracked) as given, never counted up
            assert torch.equal(scored[k], state[k]) and (torch.equal(v, state[k]) or not v.is_floating_point()), k
    got = engine.evaluate(point)
    for s in ("train", "test"):
        split = getattr(data, s).subset(90, 1)
        loss, acc = evaluate(model, split.x, split.y, 1000)
        assert got[s]["loss"][0] == pytest.approx(loss, rel=2e-6)
        assert got[s]["accuracy"][0] == pytest.approx(acc, abs=1e-12)
    # update_bn averages the groups' variances instead (it misses the spread of the group means).
    legacy = model_at(spec, state)
    update_bn([data.train.x[a:b] for a, b in group_bounds(len(data.train), bn_batch)], legacy)
    first = next(k for k in expected if k.endswith("running_var"))
    assert not torch.allclose(legacy.state_dict()[first], expected[first], rtol=1e-4)


def test_recompute_statistics_on_a_model_at_hand(mnist1d):
    """The plain form (for a trainer's averaged model): the same definition, in place, nothing
    else touched; a model without BatchNorm is left alone."""
    state = wrong_bn_state(CNN_BN, 6)
    model = model_at(CNN_BN, state)
    recompute_statistics(model, mnist1d.train.x, 100)
    expected = pooled_reference(CNN_BN, state, mnist1d.train.x, 4).state_dict()
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, expected[k], rtol=2e-5, atol=2e-6)
        else:
            assert torch.equal(v, state[k]), k
    plain = build_model("mlp", num_classes=10, input_shape=[1, 40])
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    recompute_statistics(plain, mnist1d.train.x)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_bn_samples_is_a_seeded_subset_of_the_train_split_for_bn_only(mnist1d):
    spec, data = CNN_BN, mnist1d
    engine = Engine(spec, data, bn="recompute", bn_samples=150, bn_batch=BN_BATCH, subset=64, seed=7)
    assert engine.bn_samples == 150 and engine.sizes == {"train": 64, "test": 64}
    state = wrong_bn_state(spec, 2)
    got = engine.evaluate(engine.flatten(state))
    # Independent recipe: randperm(len, Generator(seed))[:n], sorted; groups by tensor_split.
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(7))[:150].sort().values
    model = pooled_reference(spec, state, data.train.x[idx], 2)
    for s in ("train", "test"):
        scored = torch.randperm(len(getattr(data, s)), generator=torch.Generator().manual_seed(7))[:64].sort().values
        loss, _ = evaluate(model, getattr(data, s).x[scored], getattr(data, s).y[scored])
        assert got[s]["loss"][0] == pytest.approx(loss, rel=2e-6)
    # As many as the split has: the whole split (recorded as such).
    assert Engine(spec, data, bn_samples=10_000).bn_samples is None


@pytest.mark.parametrize("name", ["cnn1d-bn", "small_bn_cnn", "input-bn"])
def test_vmap_recompute_equals_the_loop(mnist1d, images, name):
    spec, data = case(name, mnist1d, images)
    torch.manual_seed(0)
    base = Engine(spec, data, bn="keep").flatten(wrong_bn_state(spec, 0))
    points = torch.stack([base + scale * torch.randn_like(base) for scale in (0.0, 0.02, 0.05, 0.1, 0.2)])
    kwargs = dict(bn="recompute", bn_batch=50, subset=120, seed=2, batch_size=64)
    loop = Engine(spec, data, strategy="loop", **kwargs)
    vmap = Engine(spec, data, strategy="vmap", memory_budget_gb=0.0003, **kwargs)
    assert (loop.strategy, vmap.strategy) == ("loop", "vmap") and vmap.vmap_chunk < len(points)
    a, b = loop.evaluate(points), vmap.evaluate(points)
    for s in ("train", "test"):
        np.testing.assert_allclose(b[s]["loss"], a[s]["loss"], rtol=1e-6, atol=0)
        np.testing.assert_allclose(b[s]["accuracy"], a[s]["accuracy"], atol=1.5 / 120)


def test_nan_point_under_vmap_recompute_stays_alone(images):
    engine = Engine(IMG_BN, images, bn="recompute", strategy="vmap", bn_batch=64)
    good = engine.flatten(wrong_bn_state(IMG_BN, 0))
    bad = good.clone()
    bad[0] = float("nan")
    got = engine.evaluate(torch.stack([good, bad, good]))
    assert np.isnan(got["train"]["loss"][1])
    assert got["train"]["loss"][0] == pytest.approx(got["train"]["loss"][2], rel=1e-12)


def test_user_errors(mnist1d):
    with pytest.raises(UserError, match="needs bn 'recompute'"):
        Engine(CNN_BN, mnist1d, bn="keep", bn_samples=100)
    with pytest.raises(UserError, match="bn_batch"):
        Engine(CNN_BN, mnist1d, bn_batch=1)
    with pytest.raises(UserError, match="bn_samples"):
        Engine(CNN_BN, mnist1d, bn_samples=1)
    with pytest.raises(UserError, match="--bn-samples 999 is larger than the train split"):
        engine_for(CNN_BN, mnist1d, AnalysisOptions(device="cpu", bn_samples=999))
    with pytest.raises(UserError, match="--bn-samples"):
        AnalysisOptions(bn="keep", bn_samples=100).validate()
    with pytest.raises(UserError, match="--bn-batch"):
        AnalysisOptions(bn_batch=0).validate()


# ------------------------------------------------------------------ the result file


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    data_spec = {"name": "mnist1d", **SMALL}
    for seed in (0, 1):
        model = build_model(CNN_BN["name"], **CNN_BN["kwargs"])
        model.load_state_dict(wrong_bn_state(CNN_BN, seed))
        save_checkpoint(root / f"{seed}.pt", model, model_spec=CNN_BN, data_spec=data_spec, epoch=1, step=1,
                        lr=0.1, optimizer="sgd")
    return root


def test_result_records_bn_samples_and_bn_batch_as_identity(checkpoints, tmp_path, mnist1d):
    a, b = checkpoints / "0.pt", checkpoints / "1.pt"
    alphas = np.array([0.0, 0.5])
    base = dict(device="cpu", subset=64, splits=("test",))
    whole = load_result(interpolate(a, b, tmp_path / "whole.h5", alphas, AnalysisOptions(**base)))
    assert whole.attrs["bn_samples"] == -1 and whole.attrs["bn_batch"] == BN_BATCH
    part = load_result(interpolate(a, b, tmp_path / "part.h5", alphas, AnalysisOptions(**base, bn_samples=100)))
    assert part.attrs["bn_samples"] == 100
    assert not np.allclose(part.metrics["test"]["loss"], whole.metrics["test"]["loss"], rtol=1e-5)
    keep = load_result(interpolate(a, b, tmp_path / "keep.h5", alphas, AnalysisOptions(**base, bn="keep")))
    assert "bn_samples" not in keep.attrs and "bn_batch" not in keep.attrs
    # The file's numbers depend on both: another value does not continue or reuse it.
    for other in (dict(bn_samples=100), dict(bn_batch=64)):
        with pytest.raises(UserError):
            interpolate(a, b, tmp_path / "whole.h5", alphas, AnalysisOptions(**base, **other))
    # The file holds the engine's numbers (statistics from the whole train split, whatever is scored).
    engine = Engine(CNN_BN, mnist1d, splits=("test",), subset=64, seed=0)
    expected = engine.evaluate(engine.flatten(wrong_bn_state(CNN_BN, 0)))
    assert whole.metrics["test"]["loss"][0] == pytest.approx(expected["test"]["loss"][0], rel=1e-12)

"""The sharpness analysis end to end: the cross-entropy path against dense Hessians.

Models are user factories of this module (``tests.test_sharpness:factory``), small enough
for a dense Hessian (316 parameters), on a 64-sample subset of MNIST-1D. The exact
quadratic checks of the algorithms are in test_hessian.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from landscape import plots
from landscape.analyses import interpolate
from landscape.analyses.common import AnalysisOptions
from landscape.analyses.sharpness import SharpnessOptions, find_run_config, momentum_limit, sharpness, summarize
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import recompute_bn
from landscape.models import build_model
from landscape.store import load_result

DATA = {"name": "mnist1d", "num_train": 384, "num_test": 256, "seed": 42, "augment": "none"}
SUBSET = 64


def factory(*, num_classes: int, input_shape, hidden: int = 6, bn: bool = False) -> nn.Module:
    """Flatten -> Linear -> (BatchNorm) -> tanh -> Linear: smooth, with negative curvature."""
    layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), hidden)]
    if bn:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py
FACTORY = "tests.test_sharpness:factory"


def make_checkpoint(path, seed: int, bn: bool = False, lr: float = 0.05):
    torch.manual_seed(seed)
    spec = {"name": FACTORY, "kwargs": {"num_classes": 10, "input_shape": [1, 40], "bn": bn}}
    model = build_model(spec["name"], **spec["kwargs"])
    if bn:  # statistics that are wrong for the data: recompute must replace them
        model[2].running_mean.fill_(3.0)
        model[2].running_var.fill_(0.2)
    save_checkpoint(path, model, model_spec=spec, data_spec=DATA, epoch=3, step=30, lr=lr, optimizer="sgd")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """RUN/sgd/final.pt, RUN/swa/averaged.pt, and the run configs the trainer writes."""
    root = tmp_path_factory.mktemp("run")
    for opt, name, seed in (("sgd", "final.pt", 0), ("swa", "averaged.pt", 1)):
        (root / opt).mkdir()
        make_checkpoint(root / opt / name, seed)
        (root / opt / "config.json").write_text(json.dumps({"optimizer": opt, "batch_size": 16, "momentum": 0.9,
                                                            "lr": 0.05}))
    (root / "config.json").write_text(json.dumps({"config": {"batch_size": 16}}))
    return root


ONE_GROUP = 10**9  # bn_batch: BatchNorm statistics from the whole train split as one group


def opts(**kw) -> AnalysisOptions:
    # The checkpoints name this module's factory: read only when the caller names it too.
    return AnalysisOptions(**{"splits": ("train",), "subset": SUBSET, "device": "cpu", "model": FACTORY, **kw})


def dense(path, bn_recompute: bool = True):
    """Model, subset data and the dense Hessian (float64) of the mean cross-entropy."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"])
    model.load_state_dict(ckpt.state_dict)
    data = load_dataset(**ckpt.data)
    split = data.train.subset(SUBSET, 0)
    if bn_recompute and any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        # The statistics come from the whole train split, never the scoring subset, in one
        # group here (the analyses are run with bn_batch=ONE_GROUP): update_bn's definition.
        recompute_bn(model, data.train.x, len(data.train))
    model = model.double().eval()
    x, y = split.x.double(), split.y
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(wv):
        out, o = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            out[n] = wv[o : o + k].reshape(s)
            o += k
        return {**out, **buffers}

    def loss(wv, xs=x, ys=y):
        return F.cross_entropy(torch.func.functional_call(model, unflat(wv), (xs,)), ys)

    h = torch.autograd.functional.hessian(loss, w)
    return model, x, y, w, h, loss, unflat


# ============================================================================ the CE path


def test_sharpness_matches_dense_hessian(run, tmp_path):
    ckpt = run / "sgd" / "final.pt"
    so = SharpnessOptions(top_k=3, smallest=True, tol=1e-6, lanczos_steps=150, trace=True, trace_method="both",
                          trace_probes=60, density=True, density_runs=2, density_steps=30, noise=True,
                          noise_samples=None, stability_samples=None, sam_steps=3)
    out = sharpness(ckpt, tmp_path / "s.h5", so, opts())
    r = load_result(out)
    model, x, y, w, h, loss, unflat = dense(ckpt)
    exact = torch.linalg.eigvalsh(h).numpy()
    assert r.attrs["analysis"] == "sharpness" and r.attrs["lr"] == 0.05 and r.attrs["train_batch_size"] == 16
    np.testing.assert_allclose(r.extra["eigenvalues"], exact[::-1][:3], rtol=1e-4)
    assert exact[0] < 0  # the model has negative curvature, and it is found
    np.testing.assert_allclose(r.extra["eigenvalues_smallest"][0], exact[0], rtol=1e-4)
    # Trace: within 3 standard errors, both methods; Hutch++ deflated by the Lanczos basis.
    for key in ("trace", "trace_hutchinson"):
        assert abs(float(r.extra[key]) - exact.sum()) <= 3 * float(r.extra[key + "_stderr"])
    assert r.extra_attrs["trace"]["method"] == "hutch++ (Lanczos basis)" and r.extra_attrs["trace"]["matvecs"] == 20
    # Density: on a grid covering the spectrum, integrating to 1.
    g, v = r.extra["density/grid"], r.extra["density/values"]
    assert np.trapezoid(v, g) == pytest.approx(1.0, abs=1e-4)
    assert g[0] <= exact[0] and g[-1] >= exact[-1]
    # The point itself: loss from the engine equals the dense loss.
    assert float(r.metrics["train"]["loss"]) == pytest.approx(float(loss(w)), rel=1e-5)
    # Gradient noise, exact mode (every sample): tr Sigma and tr(H Sigma) against dense.
    grads = torch.func.vmap(torch.func.grad(lambda wv, xi, yi: loss(wv, xi[None], yi[None])),
                            in_dims=(None, 0, 0))(w, x, y)
    c = grads - grads.mean(0)
    sigma = c.T @ c / len(x)
    assert float(r.extra["noise/trace_sigma"]) == pytest.approx(float(sigma.trace()), rel=1e-4)
    assert float(r.extra["noise/trace_h_sigma"]) == pytest.approx(float(torch.trace(h @ sigma)), rel=1e-4)
    assert float(r.extra["noise/trace_h_sigma_stderr"]) == 0.0
    # SGD stability (Wu et al. 2018) against the dense matrix, N = 384 train samples, B = 16.
    hess = torch.func.vmap(torch.func.hessian(lambda wv, xi, yi: loss(wv, xi[None], yi[None])),
                           in_dims=(None, 0, 0))(w, x, y)
    sigma_h = (hess @ hess).mean(0) - h @ h
    lr, b, n = 0.05, 16, 384
    eye = torch.eye(len(w), dtype=torch.float64)
    a = (eye - lr * h) @ (eye - lr * h) + lr**2 * (n - b) / (b * (n - 1)) * sigma_h
    assert float(r.extra["stability/sgd_lambda_max"]) == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]),
                                                                       rel=1e-4)
    assert float(r.extra["stability/nonuniformity"]) == pytest.approx(
        math.sqrt(float(torch.linalg.eigvalsh(sigma_h)[-1])), rel=1e-3)
    # GD: 2/lr, and the heavy-ball limit from the run's momentum.
    assert float(r.extra["stability/gd_limit"]) == pytest.approx(2 / lr)
    assert float(r.extra["stability/heavy_ball_limit"]) == pytest.approx((2 + 2 * 0.9) / lr)
    assert "saddle" in r.extra_attrs["stability/gd_limit"]["verdict"]
    # SAM sharpness: first order matches L(w + rho g/|g|) - L(w); ascent is at least as large.
    wg = w.clone().requires_grad_()
    (g0,) = torch.autograd.grad(loss(wg), wg)
    first = float(loss(w + 0.05 * g0 / g0.norm()) - loss(w))
    assert float(r.extra["sam/first_order"]) == pytest.approx(first, rel=1e-3)
    assert float(r.extra["sam/ascent"]) >= float(r.extra["sam/first_order"]) - 1e-7
    s = summarize(out)
    json.dumps(s)  # valid JSON (NaN -> null)
    assert s["eigenvalues"][0] == pytest.approx(exact[-1], rel=1e-4)
    plots.figure(r)


def test_batchnorm_statistics_are_recomputed(tmp_path):
    ckpt = make_checkpoint(tmp_path / "bn.pt", 3, bn=True)
    so = SharpnessOptions(top_k=1, tol=1e-6, lanczos_steps=120, sam=False)
    kept = load_result(sharpness(ckpt, tmp_path / "keep.h5", so, opts(bn="keep")))
    recomputed = load_result(sharpness(ckpt, tmp_path / "re.h5", so, opts(bn_batch=ONE_GROUP)))
    for result, recompute in ((recomputed, True), (kept, False)):
        *_, h, loss, _ = dense(ckpt, bn_recompute=recompute)
        assert float(result.extra["eigenvalues"][0]) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-4)
    assert abs(float(kept.extra["eigenvalues"][0]) - float(recomputed.extra["eigenvalues"][0])) > 1e-3


def test_by_layer_blocks_match_dense_blocks(run, tmp_path):
    ckpt = run / "sgd" / "final.pt"
    so = SharpnessOptions(top_k=1, by_layer=True, layer_steps=80, tol=1e-6, trace=True, trace_method="hutchinson",
                          trace_probes=40, sam=False)
    r = load_result(sharpness(ckpt, tmp_path / "layers.h5", so, opts()))
    *_, h, _, _ = dense(ckpt)
    names = list(r.extra["by_layer/names"])
    assert names == ["1", "3"] and list(r.extra["by_layer/numel"]) == [246, 70]
    blocks = [slice(0, 246), slice(246, 316)]
    for i, b in enumerate(blocks):
        hb = h[b, b]
        assert r.extra["by_layer/lambda_max"][i] == pytest.approx(float(torch.linalg.eigvalsh(hb)[-1]), rel=1e-4)
        assert abs(r.extra["by_layer/trace"][i] - float(hb.trace())) <= 3 * r.extra["by_layer/trace_stderr"][i]
    assert r.extra["by_layer/trace"].sum() == pytest.approx(float(r.extra["trace"]), rel=1e-9)
    plots.figure(r)


@pytest.mark.parametrize("hvp", ["grad-of-jvp", "jvp-of-grad", "double-backward"])
def test_hvp_kinds_give_the_same_numbers(run, tmp_path, hvp):
    ckpt = run / "sgd" / "final.pt"

    def measure(kind: str, name: str):
        so = SharpnessOptions(top_k=3, tol=1e-6, lanczos_steps=100, trace=True, trace_probes=9, sam=False, hvp=kind)
        r = load_result(sharpness(ckpt, tmp_path / name, so, opts()))
        info = r.extra["info"]
        assert json.loads(info.decode() if isinstance(info, bytes) else info)["hvp_method"] == kind
        return r

    kept, other = measure("retained-graph", "kept.h5"), measure(hvp, "other.h5")  # 64 samples: one batch
    np.testing.assert_allclose(kept.extra["eigenvalues"], other.extra["eigenvalues"], rtol=1e-5)
    assert float(kept.extra["trace"]) == pytest.approx(float(other.extra["trace"]), rel=1e-5)
    with pytest.raises(UserError, match="one batch"):
        sharpness(ckpt, tmp_path / "x.h5", SharpnessOptions(top_k=1, sam=False, hvp="retained-graph", hvp_batch=16),
                  opts())


# ============================================================================ stability verdicts


def gd_factor(lam: float, lr: float, momentum: float, nesterov: bool, steps: int = 4000) -> float:
    """|w| after ``steps`` of torch.optim.SGD on ``lam/2 w^2`` from w = 1 (max over the last 100
    steps: the iterates oscillate; inf once they overflow)."""
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov)
    tail = 0.0
    for step in range(steps):
        opt.zero_grad()
        (0.5 * lam * w * w).sum().backward()
        opt.step()
        x = abs(float(w.detach()))
        if not math.isfinite(x):
            return math.inf
        if step >= steps - 100:
            tail = max(tail, x)
    return tail


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_limits_match_torch_sgd(nesterov):
    lr, beta = 0.1, 0.9
    limit = momentum_limit(lr, beta, nesterov)
    assert limit == pytest.approx((2 + 2 * beta) / (lr * (1 + 2 * beta)) if nesterov else (2 + 2 * beta) / lr)
    assert gd_factor(0.99 * limit, lr, beta, nesterov) < 1e-3  # converges
    assert gd_factor(1.01 * limit, lr, beta, nesterov) > 1e3  # diverges
    if nesterov:  # the heavy-ball limit is 2.8x too lenient for Nesterov
        assert gd_factor(0.99 * momentum_limit(lr, beta, False), lr, beta, True) > 1e3


def test_nesterov_run_is_judged_by_the_nesterov_limit(tmp_path):
    root = tmp_path / "run"
    (root / "sgd").mkdir(parents=True)
    ckpt = make_checkpoint(root / "sgd" / "final.pt", 0, lr=0.05)
    (root / "sgd" / "config.json").write_text(json.dumps({"optimizer": "sgd", "batch_size": 16, "momentum": 0.9,
                                                         "nesterov": True, "lr": 0.05}))
    so = SharpnessOptions(top_k=1, tol=1e-6, lanczos_steps=120, sam=False)
    r = load_result(sharpness(ckpt, tmp_path / "n.h5", so, opts()))
    assert bool(r.attrs["nesterov"]) is True
    assert "stability/heavy_ball_limit" not in r.extra
    assert float(r.extra["stability/nesterov_limit"]) == pytest.approx(3.8 / (0.05 * 2.8))
    attrs = r.extra_attrs["stability/nesterov_limit"]
    assert attrs["verdict"] == "stable" and bool(attrs["nesterov"]) is True
    s = summarize(tmp_path / "n.h5")
    assert s["nesterov"] is True and s["stability"]["nesterov_limit"]["verdict"] == "stable"
    # The optimizer's config may omit it: RUN/config.json keeps every setting under "config".
    (root / "sgd" / "config.json").write_text(json.dumps({"optimizer": "sgd", "momentum": 0.9}))
    (root / "config.json").write_text(json.dumps({"config": {"batch_size": 16, "nesterov": True}}))
    assert find_run_config(ckpt)["nesterov"] is True and find_run_config(ckpt)["batch_size"] == 16


def test_gd_verdict_is_never_decided_inside_the_error_bar(run, tmp_path):
    ckpt = run / "sgd" / "final.pt"
    *_, h, _, _ = dense(ckpt)
    lam = float(torch.linalg.eigvalsh(h)[-1])

    def verdict(limit: float, steps: int, name: str) -> tuple[str, dict]:
        so = SharpnessOptions(top_k=1, tol=1e-4, lanczos_steps=steps, sam=False, lr=2 / limit)
        r = load_result(sharpness(ckpt, tmp_path / name, so, opts()))
        return r.extra_attrs["stability/gd_limit"]["verdict"], r.extra_attrs["stability/gd_limit"]

    # 2/lr 0.1% below lambda_max: unstable; with 3 Lanczos steps (a Ritz value below
    # lambda_max, an error bar wider than the distance) that cannot be told, and the verdict
    # is not "stable"; 2/lr equal to lambda_max (to float64): no float32 computation can tell.
    decided, attrs = verdict(lam * (1 - 1e-3), 150, "a.h5")
    short, short_attrs = verdict(lam * (1 - 1e-3), 3, "b.h5")
    equal, _ = verdict(lam, 150, "c.h5")
    assert (decided.split()[0], short.split()[0], equal.split()[0]) == ("unstable", "undetermined", "undetermined")
    # Lanczos ran until its error bar was clear of the limit, and the bar holds the exact value.
    assert attrs["lambda_max_error"] < 1e-3 * lam and abs(attrs["lambda_max"] - lam) <= attrs["lambda_max_error"]
    assert short_attrs["lambda_max_error"] > abs(short_attrs["lambda_max"] - lam * (1 - 1e-3))


# ============================================================================ along a line, resume


def test_along_an_interpolation_is_a_curve(run, tmp_path):
    a, b = run / "sgd" / "final.pt", run / "swa" / "averaged.pt"
    line = interpolate(a, b, tmp_path / "line.h5", np.array([0.0, 0.5, 1.0]), opts())
    so = SharpnessOptions(top_k=2, tol=1e-6, lanczos_steps=100, trace=True, trace_probes=9, sam_steps=1,
                          along=str(line))
    r = load_result(sharpness(None, tmp_path / "along.h5", so, opts()))
    assert r.dims == ["alpha"] and r.done.all()
    m = r.metrics["train"]
    for key in ("loss", "lambda_max", "trace", "trace_stderr", "sam_ascent"):
        assert m[key].shape == (3,) and np.isfinite(m[key]).all()
    assert r.extra["eigenvalues"].shape == (3, 2)
    np.testing.assert_allclose(m["lambda_max"], r.extra["eigenvalues"][:, 0])
    single = load_result(sharpness(a, tmp_path / "a.h5", SharpnessOptions(top_k=2, tol=1e-6, lanczos_steps=100,
                                                                          sam=False), opts()))
    assert m["lambda_max"][0] == pytest.approx(float(single.extra["eigenvalues"][0]), rel=1e-5)
    assert m["loss"][0] == pytest.approx(float(load_result(line).metrics["train"]["loss"][0]), rel=1e-9)
    fig = plots.figure(r)
    assert "along a line" in fig.layout.title.text
    with pytest.raises(UserError, match="interpolate result"):
        sharpness(None, tmp_path / "x.h5", SharpnessOptions(along=str(tmp_path / "a.h5")), opts())


def test_killed_run_resumes_from_finished_stages(run, tmp_path, monkeypatch):
    import importlib

    mod = importlib.import_module("landscape.analyses.sharpness")  # the package attribute is the function

    ckpt = run / "sgd" / "final.pt"
    so = SharpnessOptions(top_k=2, lanczos_steps=30, density=True, density_runs=1, density_steps=10, sam=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "slq_density", killed)
    with pytest.raises(KeyboardInterrupt):
        sharpness(ckpt, tmp_path / "r.h5", so, opts())
    assert (tmp_path / "r.h5.partial").exists() and not (tmp_path / "r.h5").exists()
    first = load_result(tmp_path / "r.h5.partial").extra["eigenvalues"]
    monkeypatch.undo()
    calls = []
    real = mod.lanczos
    monkeypatch.setattr(mod, "lanczos", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = load_result(sharpness(ckpt, tmp_path / "r.h5", so, opts()))
    assert calls == []  # the eigenvalues were kept, not recomputed
    np.testing.assert_array_equal(r.extra["eigenvalues"], first)
    assert "density/values" in r.extra
    # Other settings on the same file: a clear error.
    with pytest.raises(UserError, match="other settings"):
        sharpness(ckpt, tmp_path / "r.h5", SharpnessOptions(top_k=3), opts())


def test_trace_resumed_after_the_eigenvalues_is_the_same(run, tmp_path, monkeypatch):
    import importlib

    mod = importlib.import_module("landscape.analyses.sharpness")
    ckpt = run / "sgd" / "final.pt"
    so = SharpnessOptions(top_k=2, trace=True, trace_probes=9, sam=False)
    whole = load_result(sharpness(ckpt, tmp_path / "whole.h5", so, opts()))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "hutchpp", killed)
    with pytest.raises(KeyboardInterrupt):
        sharpness(ckpt, tmp_path / "r.h5", so, opts())
    monkeypatch.undo()
    # The Lanczos basis is gone with the killed process: the resumed run recomputes the same one.
    resumed = load_result(sharpness(ckpt, tmp_path / "r.h5", so, opts()))
    assert resumed.extra_attrs["trace"]["method"] == "hutch++ (Lanczos basis)"
    assert float(resumed.extra["trace"]) == float(whole.extra["trace"])
    assert float(resumed.extra["trace_stderr"]) == float(whole.extra["trace_stderr"])


# ============================================================================ settings, CLI


def test_run_config_is_found_from_any_checkpoint_depth(run, tmp_path):
    assert find_run_config(run / "sgd" / "final.pt")["batch_size"] == 16
    (run / "sgd" / "checkpoints").mkdir(exist_ok=True)
    assert find_run_config(run / "sgd" / "checkpoints" / "epoch_0001.pt")["momentum"] == 0.9
    assert find_run_config(tmp_path / "loose.pt") == {}


def test_options_are_checked(run, tmp_path):
    with pytest.raises(UserError, match="one split"):
        sharpness(run / "sgd" / "final.pt", tmp_path / "x.h5", SharpnessOptions(), opts(splits=("train", "test")))
    with pytest.raises(UserError, match="trace-method"):
        sharpness(run / "sgd" / "final.pt", tmp_path / "x.h5", SharpnessOptions(trace_method="exact"), opts())
    with pytest.raises(UserError, match="--along"):
        SharpnessOptions(along="line.h5", density=True).validate()


def test_cli_command(run, tmp_path):
    from cli import sharpness as command

    app = typer.Typer()
    command.register(app)
    app.command("noop")(lambda: None)  # a second command keeps "sharpness" a subcommand
    runner = CliRunner()
    ckpt = str(run / "sgd" / "final.pt")
    base = ["sharpness", ckpt, "--model", FACTORY, "--subset", str(SUBSET), "--device", "cpu", "--top-k", "2",
            "--lanczos-steps", "25",
            "--sam-steps", "1"]
    res = runner.invoke(app, base + ["-o", str(tmp_path / "c.h5"), "--json", "--trace", "--trace-probes", "6"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert len(summary["eigenvalues"]) == 2 and summary["lr"] == 0.05 and "trace" in summary
    assert summary["stability"]["gd_limit"]["value"] == pytest.approx(40.0)
    res = runner.invoke(app, base + ["-o", str(tmp_path / "c.h5"), "--trace", "--trace-probes", "6"])
    assert res.exit_code == 0 and "λ1" in res.output and "2/lr" in res.output
    # Default output beside the checkpoint.
    assert command.default_output(run / "sgd" / "final.pt", None) == run / "sgd" / "sharpness_final.h5"
    res = runner.invoke(app, ["sharpness"])
    assert isinstance(res.exception, UserError)
    res = runner.invoke(app, base + ["--split", "train,test", "-o", str(tmp_path / "d.h5")])
    assert isinstance(res.exception, UserError) and "one split" in str(res.exception)

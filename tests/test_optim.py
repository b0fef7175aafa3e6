"""Tests for landscape.optim. Expected values are computed here by hand (numpy), not
taken from the code under test."""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim.swa_utils import AveragedModel

from landscape.errors import UserError
from landscape.optim import (
    SAM,
    Lookahead,
    asam_param_groups,
    bias_corrected_ema,
    constant,
    copy_average_into,
    cosine,
    frozen_bn_stats,
    linear,
    parse_phases,
    phase_gamma,
    phases,
    swa,
    uniform_average,
)

# A fixed symmetric positive definite matrix and a starting point for L(w) = 1/2 w^T A w.
A = np.array(
    [[4.0, 1.0, 0.5, 0.0], [1.0, 3.0, 0.2, 0.1], [0.5, 0.2, 2.0, 0.3], [0.0, 0.1, 0.3, 1.0]]
)
W0 = np.array([1.0, -2.0, 0.5, 3.0])


def quadratic() -> tuple[nn.Parameter, torch.Tensor]:
    return nn.Parameter(torch.tensor(W0)), torch.tensor(A)


def backward_quadratic(w: nn.Parameter, a: torch.Tensor) -> torch.Tensor:
    loss = 0.5 * w @ a @ w
    loss.backward()
    return loss


# ----------------------------------------------------------------------------- averaging


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2).double()


def test_uniform_average_is_mean_and_matches_averaged_model():
    model = small_model()
    ours, reference = uniform_average(model), AveragedModel(model)
    rng = np.random.default_rng(1)
    thetas = rng.normal(size=(7, 8))  # 3*2 weights + 2 biases
    for theta in thetas:
        vector_to_parameters(torch.tensor(theta), model.parameters())
        ours.update_parameters(model)
        reference.update_parameters(model)
    got = parameters_to_vector(ours.module.parameters()).detach().numpy()
    np.testing.assert_allclose(got, thetas.mean(axis=0), rtol=0, atol=1e-12)
    want = parameters_to_vector(reference.module.parameters()).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [5, 40])
def test_bias_corrected_ema_matches_eq3(T):
    g = 0.9 ** (80 / T)
    assert phase_gamma(T) == pytest.approx(g, rel=1e-15)
    model = small_model()
    avg = bias_corrected_ema(model, g)
    rng = np.random.default_rng(T)
    thetas = rng.normal(size=(T, 8))
    for theta in thetas:
        vector_to_parameters(torch.tensor(theta), model.parameters())
        avg.update_parameters(model)
    weights = np.array([g ** (T - t) for t in range(1, T + 1)]) * (1 - g) / (1 - g**T)
    want = weights @ thetas
    got = parameters_to_vector(avg.module.parameters()).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    copy_average_into(avg, model)
    np.testing.assert_allclose(parameters_to_vector(model.parameters()).detach().numpy(), want)


def test_phase_gamma_values_and_errors():
    assert phase_gamma(80) == pytest.approx(0.9)
    assert phase_gamma(40) == pytest.approx(0.81)
    assert phase_gamma(160, gamma0=0.81) == pytest.approx(0.9)
    with pytest.raises(UserError):
        phase_gamma(0)
    with pytest.raises(UserError):
        bias_corrected_ema(small_model(), 1.0)


# ----------------------------------------------------------------------------- SAM / ASAM


def test_sam_perturbation_and_full_step():
    rho, lr = 0.05, 0.1
    w, a = quadratic()
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    backward_quadratic(w, a)
    opt.first_step()
    g = A @ W0
    eps = w.detach().numpy() - W0
    assert np.linalg.norm(eps) == pytest.approx(rho, abs=1e-6)
    np.testing.assert_allclose(eps / np.linalg.norm(eps), g / np.linalg.norm(g), atol=1e-12)

    # Whole step through step(closure), from scratch.
    w, a = quadratic()
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    backward_quadratic(w, a)
    opt.step(lambda: backward_quadratic(w, a))
    want = W0 - lr * A @ (W0 + rho * A @ W0 / np.linalg.norm(A @ W0))
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=0, atol=1e-12)


def test_sam_step_requires_closure_and_skips_params_without_grad():
    w, a = quadratic()
    idle = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = SAM([w, idle], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError):
        opt.step()
    backward_quadratic(w, a)
    opt.step(lambda: backward_quadratic(w, a))
    assert torch.equal(idle.detach(), torch.ones(3, dtype=torch.float64))
    with pytest.raises(UserError):
        SAM([w], torch.optim.SGD, rho=-1.0, lr=0.1)


def test_asam_elementwise_perturbation():
    rho, eta = 0.5, 0.01
    w, a = quadratic()
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    backward_quadratic(w, a)
    opt.first_step()
    g = A @ W0
    t = np.abs(W0) + eta
    want = rho * t**2 * g / np.linalg.norm(t * g)
    np.testing.assert_allclose(w.detach().numpy() - W0, want, rtol=0, atol=1e-12)
    opt.zero_grad()
    backward_quadratic(w, a)  # gradient at w + eps
    opt.second_step()  # restores w, then SGD with the perturbed gradient
    g_pert = A @ (W0 + want)
    np.testing.assert_allclose(w.detach().numpy(), W0 - 0.1 * g_pert, rtol=0, atol=1e-12)


def test_asam_filterwise_perturbation():
    rho, eta = 0.3, 0.1
    rng = np.random.default_rng(3)
    w_np, gw = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    b_np, gb = rng.normal(size=3), rng.normal(size=3)
    weight = nn.Parameter(torch.tensor(w_np))
    bias = nn.Parameter(torch.tensor(b_np))
    weight.grad, bias.grad = torch.tensor(gw), torch.tensor(gb)
    opt = SAM([weight, bias], torch.optim.SGD, rho=rho, adaptive=True, eta=eta,
              filterwise=True, lr=0.1)
    opt.first_step()
    # One T per row of the weight; each bias element is its own filter: |b_i| + eta.
    t_w = np.array([np.sqrt(np.sum(row**2)) for row in w_np])[:, None] + eta
    t_b = np.abs(b_np) + eta
    norm = np.sqrt(np.sum((t_w * gw) ** 2) + np.sum((t_b * gb) ** 2))
    np.testing.assert_allclose(weight.detach().numpy() - w_np, rho * t_w**2 * gw / norm, atol=1e-12)
    np.testing.assert_allclose(bias.detach().numpy() - b_np, rho * t_b**2 * gb / norm, atol=1e-12)


def _official_asam_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rho: float, eta: float, lr: float,
                        momentum: float, wd: float, rescale: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """One ASAM step written out by hand on a copy of ``model``: T_i = |w_i| + eta for the
    parameters ``rescale`` picks (by name), 1 for the rest; eps = rho T^2 g / ||T g|| over all
    parameters; then SGD (first step: momentum buffer = gradient) with the gradient at
    w + eps and weight decay at w. Gradients by autograd, everything else in numpy."""
    ref = copy.deepcopy(model)
    names = [n for n, _ in ref.named_parameters()]

    def grads_at(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(torch.tensor(values[n]))
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        return {n: p.grad.numpy().copy() for n, p in ref.named_parameters()}

    w = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    g = grads_at(w)
    t = {n: (np.abs(w[n]) + eta) if rescale(n) else np.ones_like(w[n]) for n in names}
    norm = np.sqrt(sum(np.sum((t[n] * g[n]) ** 2) for n in names))
    eps = {n: rho * t[n] ** 2 * g[n] / norm for n in names}
    g2 = grads_at({n: w[n] + eps[n] for n in names})
    return {n: w[n] - lr * (g2[n] + wd * w[n]) for n in names}


def _small_bn_net() -> nn.Module:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():  # BatchNorm's scale and shift away from 1 and 0, so T differs from SAM's
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("scope", ["weights", "all"])
def test_asam_scope_matches_the_rule_by_hand(scope):
    """scope="weights" is SamsungLabs/ASAM's rule (asam.py: T only where 'weight' is in the
    parameter's name, so BatchNorm's scale yes, biases and BatchNorm's shift no); "all" is
    eq. 5 of the paper applied to every parameter."""
    rho, eta, lr, momentum, wd = 0.5, 0.01, 0.1, 0.9, 5e-4
    net = _small_bn_net()
    torch.manual_seed(5)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    rescale = (lambda n: "weight" in n) if scope == "weights" else (lambda n: True)
    want = _official_asam_step(net, x, y, rho=rho, eta=eta, lr=lr, momentum=momentum, wd=wd, rescale=rescale)

    opt = SAM(asam_param_groups(net, scope), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=lr,
              momentum=momentum, weight_decay=wd)
    F.cross_entropy(net(x), y).backward()
    opt.step(lambda: F.cross_entropy(net(x), y).backward())
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), want[n], rtol=1e-10, atol=1e-12, err_msg=n)


def test_asam_scopes_differ_on_biases():
    """The two rules are not a rounding apart: after one step the last layer's bias moves
    differently (here by >10% of its update), while weights move alike."""
    rho, eta, lr = 0.5, 0.01, 0.1
    torch.manual_seed(5)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    steps = {}
    for scope in ("weights", "all"):
        net = _small_bn_net()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt = SAM(asam_param_groups(net, scope), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=lr)
        F.cross_entropy(net(x), y).backward()
        opt.step(lambda: F.cross_entropy(net(x), y).backward())
        steps[scope] = {n: (p.detach() - before[n]).numpy() for n, p in net.named_parameters()}
    # (0.bias feeds BatchNorm, which cancels it: no gradient, no step under either rule)
    rel = {n: np.linalg.norm(steps["weights"][n] - steps["all"][n]) / np.linalg.norm(steps["all"][n])
           for n in steps["all"] if np.linalg.norm(steps["all"][n]) > 0}
    assert rel["3.bias"] > 0.1 and rel["1.bias"] > 0.1
    assert [g["adaptive"] for g in SAM(asam_param_groups(_small_bn_net(), "weights"), torch.optim.SGD,
                                       adaptive=True, lr=0.1).param_groups] == [True, False]
    with pytest.raises(UserError, match="scope"):
        asam_param_groups(_small_bn_net(), "biases")


def test_sam_state_dict_round_trip_restores_momentum():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 2)

    def make():
        torch.manual_seed(1)
        model = nn.Linear(5, 2)
        return model, SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05,
                          momentum=0.9, weight_decay=1e-3)

    def sam_step(model, opt):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step(lambda: nn.functional.mse_loss(model(x), y).backward())

    model_a, opt_a = make()
    for _ in range(3):
        sam_step(model_a, opt_a)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    model_b, opt_b = make()
    model_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    for p in model_b.parameters():
        assert "momentum_buffer" in opt_b.base_optimizer.state[p]
    # Groups are still shared after loading: an LR change reaches the base optimizer.
    opt_b.param_groups[0]["lr"] = 0.05
    assert opt_b.base_optimizer.param_groups[0] is opt_b.param_groups[0]

    sam_step(model_a, opt_a)
    sam_step(model_b, opt_b)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_frozen_bn_stats():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(2, 3), bn).train()
    x = torch.randn(8, 2) + 5
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    with frozen_bn_stats(model):
        out = model(x)
    assert torch.equal(bn.running_mean, before[0])
    assert torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])
    assert bn.track_running_stats
    # Still normalized with the batch statistics inside the context.
    assert out.mean(0).abs().max() < 1e-5
    model(x)
    assert not torch.equal(bn.running_mean, before[0])
    assert bn.num_batches_tracked.item() == 1


# ----------------------------------------------------------------------------- Lookahead


def test_lookahead_matches_hand_loop():
    lr, k, alpha, steps = 0.1, 5, 0.5, 12
    w, a = quadratic()
    opt = Lookahead(torch.optim.SGD([w], lr=lr), k=k, alpha=alpha)
    for _ in range(steps):
        opt.zero_grad()
        backward_quadratic(w, a)
        opt.step()

    fast, slow = W0.copy(), W0.copy()
    for i in range(1, steps + 1):
        fast = fast - lr * A @ fast
        if i % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.copy()
    np.testing.assert_allclose(w.detach().numpy(), fast, rtol=0, atol=1e-12)


def test_lookahead_slow_weights_context():
    lr, k, alpha = 0.1, 5, 0.5
    w, a = quadratic()
    opt = Lookahead(torch.optim.SGD([w], lr=lr), k=k, alpha=alpha)
    for _ in range(7):  # a sync at step 5, then two more fast steps
        opt.zero_grad()
        backward_quadratic(w, a)
        opt.step()
    fast = W0.copy()
    for _ in range(5):
        fast = fast - lr * A @ fast
    slow = W0 + alpha * (fast - W0)
    fast = slow.copy()
    for _ in range(2):
        fast = fast - lr * A @ fast
    before = w.detach().clone()
    with opt.slow_weights():
        np.testing.assert_allclose(w.detach().numpy(), slow, rtol=0, atol=1e-12)
    assert torch.equal(w.detach(), before)  # the fast weights come back bit for bit
    np.testing.assert_allclose(w.detach().numpy(), fast, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError), opt.slow_weights():
        raise RuntimeError("an evaluation that fails")
    assert torch.equal(w.detach(), before)


def test_lookahead_state_dict_round_trip():
    def run(w, a, opt, n):
        for _ in range(n):
            opt.zero_grad()
            backward_quadratic(w, a)
            opt.step()

    w1, a = quadratic()
    opt1 = Lookahead(torch.optim.SGD([w1], lr=0.05, momentum=0.9), k=4, alpha=0.3)
    run(w1, a, opt1, 6)  # mid-cycle: slow weights differ from fast ones
    state = pickle.loads(pickle.dumps(opt1.state_dict()))
    w2 = nn.Parameter(w1.detach().clone())
    opt2 = Lookahead(torch.optim.SGD([w2], lr=0.05, momentum=0.9), k=5, alpha=0.5)
    opt2.load_state_dict(state)
    assert (opt2.k, opt2.alpha, opt2.fast_steps) == (4, 0.3, 6)
    assert opt2.base_optimizer.param_groups[0] is opt2.param_groups[0]
    run(w1, a, opt1, 5)
    run(w2, a, opt2, 5)
    assert torch.equal(w1, w2)


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_is_the_swa_code_rule():
    # timgaripov/swa train.py: t = epoch / horizon; lr while t <= 0.5, linear to final_lr at
    # t = 0.9, then final_lr. Values for lr 0.1, final 0.05, horizon 10, written out:
    s = linear(0.1, 0.05, 10)
    want = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.05, 0.05]
    got = [s.lr_at(e, 0, 7) for e in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert s.lr_at(7, 6, 7) == s.lr_at(7, 0, 7)  # constant within an epoch
    # the SGD baseline of that code: horizon = epochs, down to lr / 100
    base = linear(0.1, 0.001, 20)
    assert base.lr_at(14, 0, 3) == pytest.approx(0.1 * (1 - 0.99 * (0.7 - 0.5) / 0.4))
    assert base.lr_at(19, 0, 3) == pytest.approx(0.001)
    with pytest.raises(UserError):
        linear(0.1, 0.05, 0)


def test_parse_phases_good():
    assert parse_phases("80:0.1,40:0.01,40:0.001") == [(80, 0.1), (40, 0.01), (40, 0.001)]
    assert parse_phases(" 5 : 1e-3 ") == [(5, 0.001)]


@pytest.mark.parametrize(
    "text, offending",
    [
        ("", ""),
        ("80", "80"),
        ("80:0.1,", ""),
        ("80:0.1,0:0.01", "0:0.01"),
        ("-5:0.1", "-5:0.1"),
        ("80:0", "80:0"),
        ("80:-0.1", "80:-0.1"),
        ("8.5:0.1", "8.5:0.1"),
        ("a:b", "a:b"),
        ("80:0.1:3", "80:0.1:3"),
        ("80:nan", "80:nan"),
    ],
)
def test_parse_phases_bad(text, offending):
    with pytest.raises(UserError) as info:
        parse_phases(text)
    assert repr(offending) in str(info.value)
    assert repr(text) in str(info.value)


def test_phase_schedule_values_and_boundaries():
    s = phases([(80, 0.1), (40, 0.01), (40, 0.001)])
    values = {e: s.lr_at(e, 3, 10) for e in (0, 79, 80, 119, 120, 159, 500)}
    assert values == {0: 0.1, 79: 0.1, 80: 0.01, 119: 0.01, 120: 0.001, 159: 0.001, 500: 0.001}
    assert s.phase_boundaries() == [80, 120, 160]
    assert constant(0.1).phase_boundaries() == []
    with pytest.raises(UserError):
        phases([(10, 0.1), (0, 0.01)])


def test_constant_and_cosine():
    assert constant(0.3).lr_at(7, 2, 9) == 0.3
    s = cosine(0.1, epochs=10)
    spe = 4  # 40 steps in all
    assert s.lr_at(0, 0, spe) == pytest.approx(0.1)
    assert s.lr_at(5, 0, spe) == pytest.approx(0.05)  # step 20 of 40
    assert s.lr_at(2, 2, spe) == pytest.approx(0.1 * (1 + math.sqrt(0.5)) / 2)  # step 10
    assert s.lr_at(10, 0, spe) == pytest.approx(0.0, abs=1e-15)
    s = cosine(0.1, epochs=10, min_lr=0.02)
    assert s.lr_at(5, 0, spe) == pytest.approx(0.06)
    assert s.lr_at(12, 0, spe) == pytest.approx(0.02)


def test_swa_schedule_anneal():
    spe = 5
    s = swa(constant(0.1), swa_start=10, swa_lr=0.02, anneal_epochs=2)
    assert s.lr_at(9, 4, spe) == pytest.approx(0.1)
    assert s.lr_at(10, 0, spe) == pytest.approx(0.1)
    assert s.lr_at(11, 0, spe) == pytest.approx(0.06)  # 5 of 10 anneal steps
    assert s.lr_at(12, 0, spe) == pytest.approx(0.02)
    assert s.lr_at(40, 3, spe) == pytest.approx(0.02)
    # From the base schedule's LR where SWA starts, here the second phase.
    s = swa(phases([(5, 0.1), (100, 0.04)]), swa_start=10, swa_lr=0.02, anneal_epochs=1)
    assert s.lr_at(10, 0, spe) == pytest.approx(0.04)
    assert s.lr_at(10, 4, spe) == pytest.approx(0.04 - 0.02 * 4 / 5)
    assert swa(constant(0.1), 10, 0.02).lr_at(10, 0, spe) == pytest.approx(0.02)
    assert [swa(constant(0.1), 3, 0.02).should_average(e) for e in range(2, 6)] == [
        False, True, True, True]


def test_swa_schedule_cyclic():
    spe = 5
    s = swa(constant(0.1), swa_start=10, swa_lr=0.001, cycle=2, cycle_lr_max=0.05)
    assert s.lr_at(9, 4, spe) == pytest.approx(0.1)
    assert s.lr_at(10, 0, spe) == pytest.approx(0.05)  # first step of a cycle: alpha1
    assert s.lr_at(11, 4, spe) == pytest.approx(0.001)  # last step (10th): alpha2
    assert s.lr_at(10, 3, spe) == pytest.approx(0.05 - 0.049 * 3 / 9)
    assert s.lr_at(12, 0, spe) == pytest.approx(0.05)
    assert s.lr_at(13, 4, spe) == pytest.approx(0.001)
    assert [s.should_average(e) for e in range(9, 14)] == [False, False, True, False, True]
    default_max = swa(constant(0.1), swa_start=10, swa_lr=0.001, cycle=2)
    assert default_max.lr_at(10, 0, spe) == pytest.approx(0.1)
    with pytest.raises(UserError):
        swa(constant(0.1), 10, 0.001, anneal_epochs=2, cycle=2)


def test_schedule_describe_and_pickle():
    s = swa(phases([(80, 0.1), (40, 0.01)]), swa_start=100, swa_lr=0.005, anneal_epochs=5)
    d = json.loads(json.dumps(s.describe()))
    assert d["kind"] == "swa" and d["swa_lr"] == 0.005 and d["anneal_epochs"] == 5
    assert d["base"] == {"kind": "phases", "phases": [[80, 0.1], [40, 0.01]]}
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s
    assert clone.lr_at(102, 1, 7) == s.lr_at(102, 1, 7)
    assert cosine(0.1, 10, 0.001).describe() == {
        "kind": "cosine", "lr": 0.1, "epochs": 10, "min_lr": 0.001}

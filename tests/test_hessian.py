"""Hessian-vector products and the spectral algorithms against exact answers.

The quadratic tests use the generic loss closure of ``Objective`` with
``l(w) = 1/2 w^T H w`` for an H whose spectrum (negative eigenvalues included) is chosen,
so every number has an exact value. The cross-entropy path is checked against dense
Hessians of tiny models (``torch.autograd.functional.hessian``, ``torch.func.hessian``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.hessian import HVP_METHODS, DenseOperator, Objective, gradient_noise, hutchinson, hutchpp, lanczos, \
    lanczos_tridiagonals, sgd_stability, side, slq_density, trace_h_sigma

KINDS = [m for m in HVP_METHODS if m != "auto"]

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def spectrum() -> torch.Tensor:
    """Outliers at 50, 30, 20, 10, 5; a bulk in [-1, 1]; negative curvature at -4, -9, -15."""
    bulk = torch.linspace(-1.0, 1.0, 52, dtype=DTYPE)
    return torch.cat([torch.tensor([50.0, 30.0, 20.0, 10.0, 5.0], dtype=DTYPE), bulk,
                      torch.tensor([-4.0, -9.0, -15.0], dtype=DTYPE)])


def quadratic(eig: torch.Tensor, seed: int = 0) -> tuple[Objective, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d = len(eig)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    h = q @ torch.diag(eig) @ q.T
    h = (h + h.T) / 2

    def loss(w: torch.Tensor, batch) -> torch.Tensor:
        return (0.5 * w @ h @ w).expand(len(batch[0]))

    obj = Objective(loss, [(torch.zeros(1, dtype=DTYPE),)])
    w = torch.randn(d, generator=gen, dtype=DTYPE)
    return obj, w, h


# ============================================================================ quadratic


@pytest.mark.parametrize("method", KINDS)
def test_hvp_of_quadratic_is_exact(method):
    obj, w, h = quadratic(spectrum())
    obj = Objective(obj.fn, obj.batches, hvp_method=method)
    v = torch.randn(3, len(w), dtype=DTYPE)
    assert torch.allclose(obj.hvp(w, v), v @ h, rtol=0, atol=1e-11)
    assert torch.allclose(obj.hvp(w, v[0]), h @ v[0], rtol=0, atol=1e-11)
    assert obj.hvp_count == 4


def test_lanczos_top_and_smallest_eigenvalues_of_quadratic():
    eig = spectrum()
    obj, w, _ = quadratic(eig)
    res = lanczos(obj.operator(w), 5, smallest=True, tol=1e-10, max_steps=len(eig))
    top = np.sort(eig.numpy())[::-1][:5]
    low = np.sort(eig.numpy())[:3]
    np.testing.assert_allclose(res.eigenvalues, top, rtol=1e-4)
    np.testing.assert_allclose(res.smallest[:3], low, rtol=1e-4)  # the negative curvature
    assert res.converged
    assert np.all(res.residuals <= 1e-10 * 50 + 1e-12)
    assert res.steps < len(eig)  # stopped on the residual bound, before the whole space


def dense_operator(eig: torch.Tensor, seed: int = 0) -> DenseOperator:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eig), len(eig), generator=gen, dtype=DTYPE))
    return DenseOperator(q @ torch.diag(eig) @ q.T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_resolves_a_near_degenerate_pair_at_the_bottom(seed):
    # Bottom six: -0.35, -0.3, -0.25, a pair -0.201/-0.2 (1e-3 apart), -0.15; lambda_max = 50.
    # tol * lambda_max = 5e-3 is wider than the pair: a Ritz value sitting between the two
    # passes it (residual ~ half their distance) before the second copy appears, and the
    # 6th smallest (-0.15) was reported as the 5th, "converged".
    eig = torch.cat([torch.tensor([50.0, 30.0, 20.0, 10.0, 5.0]), torch.linspace(0.05, 1.0, 150),
                     torch.tensor([-0.35, -0.3, -0.25, -0.201, -0.2, -0.15])]).to(DTYPE)
    exact = np.sort(eig.numpy())
    res = lanczos(dense_operator(eig, seed), 5, smallest=True, tol=1e-4, max_steps=150,
                  generator=torch.Generator().manual_seed(seed))
    assert res.converged
    np.testing.assert_allclose(res.smallest, exact[:5], rtol=1e-4)
    np.testing.assert_allclose(res.eigenvalues, exact[::-1][:5], rtol=1e-4)
    # Each bottom value is resolved relative to itself, not to lambda_max.
    assert np.all(res.smallest_residuals <= 1e-4 * np.abs(res.smallest))


def test_lanczos_separates_the_top_value_from_a_threshold():
    # lambda_max = 10 + 2e-4, just above a limit of 10: the plain tolerance (tol * 10 = 1e-3)
    # stops with an error bar that holds the limit; `separate` keeps going until it does not.
    eig = torch.cat([torch.tensor([10.0002, 9.99, 9.98]), torch.linspace(-1.0, 9.0, 80)]).to(DTYPE)
    op = dense_operator(eig, 3)
    plain = lanczos(op, 1, tol=1e-4, generator=torch.Generator().manual_seed(0))
    assert side(plain.eigenvalues[0], plain.errors[0], 10.0) is None  # the case the option is for
    res = lanczos(op, 1, tol=1e-4, max_steps=83, separate=(10.0,), generator=torch.Generator().manual_seed(0))
    assert side(res.eigenvalues[0], res.errors[0], 10.0) == 1
    assert abs(res.eigenvalues[0] - 10.0002) <= res.errors[0]
    assert res.steps > plain.steps
    # Too few steps to separate: the comparison stays undetermined, it is not guessed.
    short = lanczos(op, 1, tol=1e-4, max_steps=plain.steps, separate=(10.0,),
                    generator=torch.Generator().manual_seed(0))
    assert side(short.eigenvalues[0], short.errors[0], 10.0) is None


def test_lanczos_ritz_vectors_are_eigenvectors():
    obj, w, h = quadratic(spectrum())
    res = lanczos(obj.operator(w), 2, tol=1e-10, max_steps=60, return_vectors=True)
    for lam, v in zip(res.eigenvalues, res.vectors):
        v = v / v.norm()
        assert torch.allclose(h @ v, lam * v, atol=1e-6)


def test_lanczos_restarts_after_an_invariant_subspace():
    # The start vector only sees two eigenvectors: the Krylov space is 2-dimensional, the third
    # eigenvalue is reachable only through the orthogonal restart.
    h = torch.diag(torch.tensor([5.0, 4.0, 3.0, 0.0, 0.0, 0.0], dtype=DTYPE))
    start = torch.tensor([1.0, 1.0, 0, 0, 0, 0], dtype=DTYPE)
    res = lanczos(DenseOperator(h), 3, tol=1e-12, start=start)
    np.testing.assert_allclose(res.eigenvalues, [5.0, 4.0, 3.0], rtol=1e-10)


def test_lanczos_in_lockstep_equals_separate_runs():
    obj, w, _ = quadratic(spectrum())
    starts = torch.randn(3, 60, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    together = lanczos_tridiagonals(obj.operator(w), starts, 12)
    for i in range(3):
        (alone,) = lanczos_tridiagonals(obj.operator(w), starts[i : i + 1], 12)
        np.testing.assert_allclose(together[i].alpha, alone.alpha, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(together[i].beta, alone.beta, rtol=1e-10, atol=1e-10)


def test_hutchinson_and_hutchpp_within_three_standard_errors():
    eig = spectrum()
    obj, w, _ = quadratic(eig)
    exact = float(eig.sum())
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        h1 = hutchinson(obj.operator(w), 60, generator=gen)
        assert abs(h1.value - exact) <= 3 * h1.stderr, (h1.value, h1.stderr, exact)
        h2 = hutchpp(obj.operator(w), 30, generator=gen)
        assert abs(h2.value - exact) <= 3 * h2.stderr, (h2.value, h2.stderr, exact)
        assert h2.matvecs == 30
        # Deflating the outliers is what Hutch++ is for: a much smaller error bar here.
        assert h2.stderr < h1.stderr


def test_hutchpp_with_the_lanczos_basis_is_unbiased_and_cheaper():
    # The Krylov basis of a Lanczos run that found the top eigenvalues replaces Hutch++'s sketch:
    # tr(Q^T H Q) = tr(T) costs nothing, only the m/3 remainder probes are spent.
    eig = spectrum()
    obj, w, _ = quadratic(eig)
    exact = float(eig.sum())
    krylov = lanczos(obj.operator(w), 5, tol=1e-6, return_basis=True)
    q = krylov.basis.double()
    np.testing.assert_allclose((q @ q.T).numpy(), np.eye(len(q)), atol=1e-10)
    assert krylov.basis_trace == pytest.approx(float((q * obj.hvp(w, q)).sum()), rel=1e-10)
    values, errors, plain_errors = [], [], []
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        est = hutchpp(obj.operator(w), 30, generator=gen, basis=krylov.basis, basis_trace=krylov.basis_trace)
        assert est.method == "hutch++ (Lanczos basis)" and est.matvecs == 10
        assert abs(est.value - exact) <= 4 * est.stderr, (seed, est.value, est.stderr, exact)
        values.append(est.value)
        errors.append(est.stderr)
        plain_errors.append(hutchpp(obj.operator(w), 30, generator=torch.Generator().manual_seed(seed)).stderr)
    # Unbiased: the mean of 60 estimates is within 3 of its standard errors of the exact trace.
    assert abs(np.mean(values) - exact) <= 3 * np.std(values, ddof=1) / math.sqrt(len(values))
    # A third of the products, and no larger error bar than the sketch's Hutch++ here.
    assert np.mean(errors) <= np.mean(plain_errors)
    # A basis smaller than the sketch (m/3 rows) is not used: plain Hutch++.
    small = hutchpp(obj.operator(w), 60, basis=krylov.basis[:5], basis_trace=1.0)
    assert small.method == "hutch++" and small.matvecs == 60


def test_hutchinson_block_traces():
    eig = spectrum()
    obj, w, h = quadratic(eig)
    seg = torch.tensor([0] * 20 + [1] * 25 + [2] * 15)
    est = hutchinson(obj.operator(w), 80, generator=torch.Generator().manual_seed(0), segments=seg)
    exact = [float(h[seg == b][:, seg == b].diagonal().sum()) for b in range(3)]
    assert est.blocks.shape == (3,)
    np.testing.assert_allclose(est.blocks.sum(), est.value, rtol=1e-10)
    for b in range(3):
        assert abs(est.blocks[b] - exact[b]) <= 3 * est.blocks_stderr[b]


def test_slq_density_integrates_to_one_and_sits_on_the_spectrum():
    eig = spectrum()
    obj, w, _ = quadratic(eig)
    dens = slq_density(obj.operator(w), runs=8, steps=60, points=4000, sigma=0.2,
                       generator=torch.Generator().manual_seed(0))
    g, v = dens.grid, dens.values
    assert np.all(v >= 0)
    assert np.trapezoid(v, g) == pytest.approx(1.0, abs=1e-6)
    assert g[0] <= -15 - 5 * 0.2 and g[-1] >= 50 + 5 * 0.2

    def mass(lo, hi):
        sel = (g >= lo) & (g <= hi)
        return np.trapezoid(v[sel], g[sel])

    d = len(eig)
    # The bulk holds 52 of 60 eigenvalues; each outlier 1/60 (SLQ weights are random: 8 runs).
    assert mass(-1.8, 1.8) == pytest.approx(52 / d, abs=0.1)
    for lam in (50.0, 30.0, -15.0):
        assert 0.1 / d < mass(lam - 1, lam + 1) < 4 / d
    # Nothing where there is no eigenvalue.
    assert mass(12, 18) < 1e-6 and mass(35, 45) < 1e-6 and mass(-14, -10) < 1e-6


# ============================================================================ cross-entropy models


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 5, classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def tiny_problem(n: int = 24, seed: int = 0, batch_size: int = 7):
    torch.manual_seed(seed)
    model = TinyMLP().double()
    x = torch.randn(n, 6, dtype=DTYPE)
    y = torch.randint(0, 3, (n,))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    obj, w, space = Objective.for_model(model, params, {}, x, y, batch_size=batch_size)
    return model, obj, w, space, x, y


def dense_hessian(model, space, x, y, w):
    def loss(wv):
        return F.cross_entropy(torch.func.functional_call(model, space.unflatten(wv), (x,)), y)

    return torch.autograd.functional.hessian(loss, w)


@pytest.mark.parametrize("method", KINDS[:3])  # four batches: "retained-graph" needs one (next test)
def test_model_hvp_matches_dense_hessian(method):
    model, obj, w, space, x, y = tiny_problem()
    obj = Objective(obj.fn, obj.batches, hvp_method=method)
    h = dense_hessian(model, space, x, y, w)
    v = torch.randn(2, len(w), dtype=DTYPE)
    assert len(obj.batches) == 4  # 24 samples in batches of 7: the per-sample mean spans batches
    assert torch.allclose(obj.hvp(w, v), v @ h, atol=1e-10)
    loss, g = obj.value_and_grad(w)
    with torch.no_grad():
        assert loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)


def test_retained_graph_matches_dense_hessian_and_follows_the_point():
    model, obj, w, space, x, y = tiny_problem(batch_size=24)  # one batch
    kept = Objective(obj.fn, obj.batches, hvp_method="retained-graph")
    v = torch.randn(3, len(w), dtype=DTYPE)
    assert torch.allclose(kept.hvp(w, v), v @ dense_hessian(model, space, x, y, w), atol=1e-10)
    graph = kept._graph
    kept.hvp(w, v[0])
    assert kept._graph is graph  # the same point: the graph is reused, not rebuilt
    w2 = w + 0.3 * torch.randn(len(w), dtype=DTYPE)
    assert torch.allclose(kept.hvp(w2, v), v @ dense_hessian(model, space, x, y, w2), atol=1e-10)
    w2 += 0.1  # in place: the kept graph is of a copy, and the change is seen
    assert torch.allclose(kept.hvp(w2, v[0]), dense_hessian(model, space, x, y, w2) @ v[0], atol=1e-10)
    with pytest.raises(ValueError, match="one batch"):
        Objective(obj.fn, tiny_problem(batch_size=7)[1].batches, hvp_method="retained-graph")


def test_small_mlp_top_eigenvalue_matches_dense_hessian():
    model, obj, w, space, x, y = tiny_problem(n=40)
    h = dense_hessian(model, space, x, y, w)
    exact = torch.linalg.eigvalsh(h).numpy()
    res = lanczos(obj.operator(w), 3, smallest=True, tol=1e-10, max_steps=len(w))
    np.testing.assert_allclose(res.eigenvalues, exact[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(res.smallest[0], exact[0], rtol=1e-4)


def per_sample_dense(model, space, x, y, w):
    def one(wv, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, space.unflatten(wv), (xi[None],)), yi[None])

    grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(w, x, y)
    hessians = torch.func.vmap(torch.func.hessian(one), in_dims=(None, 0, 0))(w, x, y)
    return grads, hessians


def test_gradient_noise_and_trace_h_sigma_match_dense():
    model, obj, w, space, x, y = tiny_problem(n=30)
    grads, hessians = per_sample_dense(model, space, x, y, w)
    h = hessians.mean(0)
    gbar = grads.mean(0)
    c = grads - gbar
    sigma = c.T @ c / len(x)
    noise = gradient_noise(obj, w, chunk=8)
    assert noise.trace_sigma == pytest.approx(float(sigma.trace()), rel=1e-9)
    assert torch.allclose(noise.grad, gbar, atol=1e-12)
    exact = float(torch.trace(h @ sigma))
    full = trace_h_sigma(obj, w, noise, samples=None, chunk=8, block=3)
    assert full.value == pytest.approx(exact, rel=1e-9)
    assert full.stderr == 0 and full.samples_used == 30
    # The identity (1/n) sum g_i^T H g_i - gbar^T H gbar, too.
    alt = float(torch.einsum("id,de,ie->", grads, h, grads) / len(x) - gbar @ h @ gbar)
    assert full.value == pytest.approx(alt, rel=1e-9)
    part = trace_h_sigma(obj, w, noise, samples=12, generator=torch.Generator().manual_seed(3))
    assert part.samples_used == 12 and part.stderr > 0
    assert abs(part.value - exact) <= 4 * part.stderr


def wu_quadratic(a: torch.Tensor, lr: float = 0.1, batch: int = 4, n: int = 16, seed: int = 0):
    """Per-sample quadratics ``l_i = 1/2 (Q^T w)^T diag(h + e_i) (Q^T w)`` whose Wu et al.
    matrix ``(I - lr H)^2 + lr^2 (N-B)/(B(N-1)) Sigma_H`` has the eigenvalues ``a`` exactly:
    H and every H_i share the basis Q, so A = Q diag((1 - lr h)^2 + factor var(e)) Q^T. A
    third of each a_j comes from the noise term, the rest from (1 - lr h_j)^2."""
    gen = torch.Generator().manual_seed(seed)
    d = len(a)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    factor = lr**2 * (n - batch) / (batch * (n - 1))
    var = a / 3 / factor
    h = (1 - torch.sqrt(a - factor * var)) / lr
    signs = torch.tensor([1.0, -1.0], dtype=DTYPE).repeat(n // 2)
    diag = h[None, :] + signs[:, None] * torch.sqrt(var)[None, :]  # per coordinate: mean h, variance var

    def loss(w: torch.Tensor, b) -> torch.Tensor:
        z = w @ q
        return 0.5 * (b[0] * z * z).sum(1)

    obj = Objective(loss, [(diag,)], hvp_method="double-backward")
    return obj, torch.randn(d, generator=gen, dtype=DTYPE), lr, batch, n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sgd_stability_verdict_is_decided_outside_its_error_bar(seed):
    # lambda_max(A) = 1.0007 on top of 15 eigenvalues in [0.998, 0.9998]: Lanczos on A with
    # tol 1e-3 stopped at a Ritz value below 1 and said "stable" (seeds 1 and 2).
    a = torch.cat([torch.tensor([1.0007]), 1 - torch.linspace(2e-4, 2e-3, 15), torch.linspace(0.2, 0.9, 24)])
    obj, w, lr, batch, n = wu_quadratic(a.to(DTYPE))
    res = sgd_stability(obj, w, lr, batch, n, generator=torch.Generator().manual_seed(seed))
    assert res.stable is False
    assert abs(res.lambda_max_a - 1.0007) <= res.error
    assert res.lambda_max_a - res.error > 1
    # The other side: without the 1.0007 the top is the cluster's 0.9998, stable.
    a[0] = 0.9993
    obj, w, lr, batch, n = wu_quadratic(a.to(DTYPE))
    res = sgd_stability(obj, w, lr, batch, n, generator=torch.Generator().manual_seed(seed))
    assert res.stable is True and abs(res.lambda_max_a - 0.9998) <= res.error


def test_sgd_stability_is_undetermined_when_the_steps_run_out():
    a = torch.cat([torch.tensor([1.0007]), 1 - torch.linspace(2e-4, 2e-3, 15), torch.linspace(0.2, 0.9, 24)])
    obj, w, lr, batch, n = wu_quadratic(a.to(DTYPE))
    res = sgd_stability(obj, w, lr, batch, n, max_steps=3, generator=torch.Generator().manual_seed(1))
    assert res.stable is None
    assert abs(res.lambda_max_a - 1) <= res.error  # the error bar holds 1: no verdict


def test_sgd_stability_matches_dense_wu_matrix():
    model, obj, w, space, x, y = tiny_problem(n=20)
    _, hessians = per_sample_dense(model, space, x, y, w)
    h = hessians.mean(0)
    sigma_h = (hessians @ hessians).mean(0) - h @ h
    lr, batch, n_train = 0.5, 4, 20
    factor = lr**2 * (n_train - batch) / (batch * (n_train - 1))
    eye = torch.eye(len(w), dtype=DTYPE)
    a = (eye - lr * h) @ (eye - lr * h) + factor * sigma_h
    exact = float(torch.linalg.eigvalsh(a)[-1])
    res = sgd_stability(obj, w, lr, batch, n_train, samples=None, tol=1e-9, max_steps=len(w), chunk=6)
    assert res.lambda_max_a == pytest.approx(exact, rel=1e-6)
    assert res.nonuniformity == pytest.approx(math.sqrt(float(torch.linalg.eigvalsh(sigma_h)[-1])), rel=1e-5)
    assert res.stable == (exact <= 1) and abs(exact - 1) > res.error
    assert res.factor == pytest.approx(factor)
    assert res.nonuniformity_limit == pytest.approx(math.sqrt(batch * (n_train - 1) / (n_train - batch)) / lr)


@pytest.mark.parametrize("batch_size", [7, 24])
def test_auto_measures_and_keeps_the_faster_product(batch_size):
    model, obj, w, space, x, y = tiny_problem(batch_size=batch_size)
    assert obj.method == "auto"
    h = dense_hessian(model, space, x, y, w)
    v = torch.randn(len(w), dtype=DTYPE)
    assert torch.allclose(obj.hvp(w, v), h @ v, atol=1e-10)
    # One batch (24 samples): the kept graph competes too.
    kinds = set(KINDS) if batch_size == 24 else set(KINDS) - {"retained-graph"}
    assert set(obj.timings) == kinds
    assert obj.method == min(obj.timings, key=obj.timings.get)
    assert obj.choice_source == "measured"


def test_auto_choice_is_cached_per_workload(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "hvp-choice.json"
    torch.manual_seed(0)
    model = TinyMLP().double()
    x, y = torch.randn(24, 6, dtype=DTYPE), torch.randint(0, 3, (24,))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def objective(batch_size=24, m=model):
        p = {k: v.detach().clone() for k, v in m.named_parameters()}
        return Objective.for_model(m, p, {}, x, y, batch_size=batch_size, choice_cache=path)[:2]

    first, w = objective()
    v = torch.randn(len(w), dtype=DTYPE)
    expected = first.hvp(w, v)
    assert first.choice_source == "measured" and path.exists()
    stored = json.loads(path.read_text())
    (entry,) = stored["choices"].values()
    assert entry["method"] == first.method
    assert [p.name for p in path.parent.iterdir()] == ["hvp-choice.json"]  # written atomically, no temp left

    def no_measuring(*_a, **_k):
        raise AssertionError("measured although the choice was cached")

    monkeypatch.setattr(Objective, "_measure", no_measuring)
    second, _ = objective()
    assert torch.allclose(second.hvp(w, v), expected, atol=1e-12)
    assert second.method == first.method and second.choice_source == "cache"
    assert second.hvp_count == 1  # the product asked for, nothing spent on timing
    monkeypatch.undo()
    # Another workload (batch shape, architecture) is measured and added beside the first.
    other, _ = objective(batch_size=7)
    other.hvp(w, v)
    assert other.choice_source == "measured" and "retained-graph" not in other.timings
    wider = TinyMLP(hidden=7).double()
    third, w3 = objective(m=wider)
    third.hvp(w3, torch.randn(len(w3), dtype=DTYPE))
    assert third.choice_source == "measured"
    assert len(json.loads(path.read_text())["choices"]) == 3
    # A corrupt file is ignored (measured again) and replaced by a valid one.
    path.write_text("{not json")
    again, _ = objective()
    assert torch.allclose(again.hvp(w, v), expected, atol=1e-12)
    assert again.choice_source == "measured"
    assert len(json.loads(path.read_text())["choices"]) == 1


# ============================================================================ data parallel


class ThreadGroup:
    """``world`` threads standing in for torchrun ranks: ``reducer(rank)`` is an all-reduce
    (sum in rank order, so every thread gets the same bits, as a real collective gives).

    torch.func's forward-AD levels are process-global, so the threads take turns: each holds
    ``turn`` while it computes and lets go only inside a reduction."""

    def __init__(self, world: int):
        import threading

        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)
        self.turn = threading.Lock()

    def reducer(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.turn.release()
            try:
                self.barrier.wait()
                out = self.slots[0].clone()
                for other in self.slots[1:]:
                    out += other
                self.barrier.wait()  # everyone has read before anyone writes again
            finally:
                self.turn.acquire()
            return out

        return reduce


def everything(obj: Objective, w: torch.Tensor) -> dict:
    """Every objective-level quantity the sharpness analysis uses, in its order."""
    v = torch.randn(2, len(w), generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    value, g = obj.value_and_grad(w)
    noise = gradient_noise(obj, w, chunk=5)
    ths = trace_h_sigma(obj, w, noise, samples=9, generator=torch.Generator().manual_seed(4), chunk=4)
    sgd = sgd_stability(obj, w, 0.5, 4, 30, samples=11, tol=1e-9, max_steps=12, chunk=3)
    return {"value": value, "loss": obj.value(w), "grad": g, "hvp": obj.hvp(w, v),
            "top": lanczos(obj.operator(w), 2, tol=1e-10, max_steps=20).eigenvalues,
            "trace_sigma": noise.trace_sigma, "trace_h_sigma": ths.value, "per_sample": ths.per_sample,
            "sgd": sgd.lambda_max_a, "s": sgd.nonuniformity, "method": obj.method}


@pytest.mark.parametrize("world", [2, 6])  # 6 ranks for 5 batches: the last one holds none
def test_data_parallel_objective_equals_one_process(world):
    """Each "rank" holds every world-th batch and reduces its sums: the same numbers as one
    process (float64 summation order aside), the same "auto" choice, no rank left waiting."""
    import threading

    model, obj, w, space, x, y = tiny_problem(n=30)
    one = everything(obj, w)
    group = ThreadGroup(world)
    got: list[dict | BaseException] = [None] * world

    def rank(r: int) -> None:
        group.turn.acquire()
        try:
            mine, _, _ = Objective.for_model(model, space.unflatten(w), {}, x, y, batch_size=7,
                                             reduce=group.reducer(r), shard=(r, world))
            assert mine.n == 30 and len(mine.batches) == len(range(r, 5, world))
            got[r] = everything(mine, w)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            got[r] = exc
            group.barrier.abort()
        finally:
            group.turn.release()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [e for e in got if isinstance(e, BaseException)]
    if errors:  # the first real one, not the others' broken barrier
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    for r, res in enumerate(got):
        assert res["method"] == got[0]["method"]
        for key, value in one.items():
            if key == "method":
                continue
            np.testing.assert_allclose(np.asarray(res[key]), np.asarray(value), rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {r}: {key}")

"""Tests for landscape.directions: Li et al. normalization, Gram-Schmidt planes, PCA, time delay.

Reference numbers are computed independently (numpy float64, per-entry loops over the
state_dict), never with the functions under test.
"""

import numpy as np
import pytest
import torch
from torch import nn

from landscape import directions as D
from landscape.directions import gram_schmidt_plane, pca, random_direction, random_plane, time_delay
from landscape.errors import UserError
from landscape.models import build_model

from landscape.engine import StateLayout


def make(name, **kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    state = model.state_dict()
    layout = StateLayout(state, model)
    return model, state, layout


@pytest.fixture(scope="module")
def resnet():
    model, state, layout = make("resnet20", num_classes=10, input_shape=[3, 32, 32])
    # Non-trivial BN parameters and running stats, so that "zero" is a real check.
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point() and v.dim() == 1:
                v.copy_(torch.rand_like(v) + 0.5)
    return model, state, layout


@pytest.fixture(scope="module")
def cnn1d():
    return make("cnn1d", num_classes=10, input_shape=[1, 40])


@pytest.fixture(scope="module")
def cnn1d_bn():
    return make("cnn1d", num_classes=10, input_shape=[1, 40], bn=True)


def entry_of(layout, name):
    return next(e for e in layout.entries if e.name == name)


def piece(vec, e):
    return vec[e.offset:e.offset + e.numel].reshape(e.shape).double().numpy()


def expected_role(model, name, tensor):
    """Independent role rule: weight = parameter with dim > 1; bn = parameter of a norm module;
    bias = other parameters; buffer = floating buffer."""
    params = dict(model.named_parameters())
    if name not in params:
        return "buffer"
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return "bn"
    return "weight" if tensor.dim() > 1 else "bias"


def test_layout_roles_as_expected(resnet, cnn1d_bn):
    for model, state, layout in (resnet, cnn1d_bn):
        floating = {k: v for k, v in state.items() if v.is_floating_point()}
        assert [e.name for e in layout.entries] == list(floating)
        for e in layout.entries:
            assert e.role == expected_role(model, e.name, state[e.name]), e.name
        assert layout.dim == sum(v.numel() for v in floating.values())


@pytest.mark.parametrize("fixture", ["resnet", "cnn1d", "cnn1d_bn"])
def test_filter_normalization(fixture, request):
    model, state, layout = request.getfixturevalue(fixture)
    base = layout.flatten(state)
    d = random_direction(layout, base, torch.Generator().manual_seed(1))
    assert d.dtype == torch.float32 and d.shape == (layout.dim,) and d.device == base.device
    n_weight = 0
    for e in layout.entries:
        got = piece(d, e)
        if e.role == "weight":
            n_weight += 1
            w = state[e.name].double().numpy().reshape(e.shape[0], -1)
            dn = np.linalg.norm(got.reshape(e.shape[0], -1), axis=1)
            bn = np.linalg.norm(w, axis=1)
            np.testing.assert_allclose(dn, bn, rtol=1e-5, err_msg=e.name)
            assert (dn > 0).all()
        else:  # bias / bn ignored, buffers never perturbed
            assert not got.any(), e.name
    assert n_weight > 0


def test_ignore_none_uses_the_weights_themselves_for_1d_entries(resnet):
    """loss-landscape's normalize_directions_for_weights: with ignore != 'biasbn' a 1-D
    parameter's direction is the parameter itself (d.copy_(w))."""
    model, state, layout = resnet
    base = layout.flatten(state)
    for norm in ("filter", "layer"):
        d = random_direction(layout, base, torch.Generator().manual_seed(2), norm=norm, ignore="none")
        roles = set()
        for e in layout.entries:
            got = piece(d, e)
            roles.add(e.role)
            if e.role in ("bias", "bn"):
                np.testing.assert_array_equal(got, state[e.name].numpy().ravel(), err_msg=e.name)
            elif e.role == "buffer":
                assert not got.any(), e.name
        assert {"weight", "bias", "bn", "buffer"} <= roles


def test_zero_base_filter_gives_zero_direction_filter(cnn1d):
    model, state, layout = cnn1d
    state = {k: v.clone() for k, v in state.items()}
    state["features.2.weight"][3].zero_()
    base = layout.flatten(state)
    d = random_direction(layout, base, torch.Generator().manual_seed(3))
    got = piece(d, entry_of(layout, "features.2.weight"))
    assert not got[3].any()
    assert np.all(np.linalg.norm(np.delete(got, 3, axis=0).reshape(63, -1), axis=1) > 0)


def test_layer_normalization(cnn1d_bn):
    model, state, layout = cnn1d_bn
    base = layout.flatten(state)
    d = random_direction(layout, base, torch.Generator().manual_seed(4), norm="layer")
    for e in layout.entries:
        got = piece(d, e)
        if e.role == "weight":
            np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(state[e.name].double().numpy()),
                                       rtol=1e-5, err_msg=e.name)
            # Layer, not filter, normalization: filter norms are not all equal to the base ones.
            fn = np.linalg.norm(got.reshape(e.shape[0], -1), axis=1)
            bn = np.linalg.norm(state[e.name].double().numpy().reshape(e.shape[0], -1), axis=1)
            assert not np.allclose(fn, bn, rtol=1e-3)
        else:
            assert not got.any(), e.name


def test_none_normalization_is_the_raw_gaussian(cnn1d_bn):
    model, state, layout = cnn1d_bn
    base = layout.flatten(state)
    raw = torch.randn(layout.dim, generator=torch.Generator().manual_seed(5)).double().numpy()
    d = random_direction(layout, base, torch.Generator().manual_seed(5), norm="none", ignore="none")
    for e in layout.entries:
        got = d[e.offset:e.offset + e.numel].double().numpy()
        want = np.zeros(e.numel) if e.role == "buffer" else raw[e.offset:e.offset + e.numel]
        np.testing.assert_array_equal(got, want, err_msg=e.name)


def test_same_seed_same_direction(resnet):
    model, state, layout = resnet
    base = layout.flatten(state)
    a = random_direction(layout, base, torch.Generator().manual_seed(7))
    b = random_direction(layout, base, torch.Generator().manual_seed(7))
    c = random_direction(layout, base, 7)  # an int seed is a fresh generator
    other = random_direction(layout, base, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, other)
    # The weight part does not depend on the ignore option (the whole vector is always drawn).
    full = random_direction(layout, base, torch.Generator().manual_seed(7), ignore="none")
    w = layout.mask("weight")
    assert torch.equal(a[w], full[w])


def test_random_plane_draws_in_sequence_and_records_cosine(cnn1d):
    model, state, layout = cnn1d
    base = layout.flatten(state)
    g = torch.Generator().manual_seed(9)
    x1 = random_direction(layout, base, g)
    y1 = random_direction(layout, base, g)
    p = random_plane(layout, base, torch.Generator().manual_seed(9))
    assert torch.equal(p.x, x1) and torch.equal(p.y, y1)
    xn, yn = x1.double().numpy(), y1.double().numpy()
    assert p.cosine == pytest.approx(xn @ yn / np.linalg.norm(xn) / np.linalg.norm(yn), abs=1e-12)
    assert abs(p.cosine) < 0.05  # near-orthogonal in 43k dimensions

    q = random_plane(layout, base, torch.Generator().manual_seed(9), orthogonal=True)
    assert torch.equal(q.x, x1) and q.cosine == p.cosine
    qx, qy = q.x.double().numpy(), q.y.double().numpy()
    assert abs(qx @ qy) / np.linalg.norm(qx) / np.linalg.norm(qy) < 1e-6
    assert np.linalg.norm(qy) == pytest.approx(np.linalg.norm(yn), rel=1e-6)
    assert not q.y[~layout.mask("weight")].any()


def test_orthogonalize_helper():
    g = torch.Generator().manual_seed(0)
    a, b, d = (torch.randn(500, generator=g, dtype=torch.float64) for _ in range(3))
    r = D.orthogonalize(d, [a, b, a + b, torch.zeros(500, dtype=torch.float64)])
    assert abs(float(r @ a)) < 1e-10 * float(a.norm() * d.norm())
    assert abs(float(r @ b)) < 1e-10 * float(b.norm() * d.norm())
    # What is removed lies in span(a, b): r = d - alpha a - beta b.
    A = torch.stack([a, b], 1).numpy()
    coef, *_ = np.linalg.lstsq(A, (d - r).numpy(), rcond=None)
    np.testing.assert_allclose(A @ coef, (d - r).numpy(), atol=1e-10)


def test_bad_options_are_user_errors(cnn1d):
    model, state, layout = cnn1d
    base = layout.flatten(state)
    with pytest.raises(UserError, match="normalization"):
        random_direction(layout, base, torch.Generator(), norm="filterwise")
    with pytest.raises(UserError, match="ignore"):
        random_direction(layout, base, torch.Generator(), ignore="bias")
    with pytest.raises(ValueError):
        random_direction(layout, base[:-1], torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_direction_is_device_independent(resnet):
    model, state, layout = resnet
    base = layout.flatten(state)
    cpu = random_direction(layout, base, torch.Generator().manual_seed(11))
    gpu = random_direction(layout, base.cuda(), torch.Generator().manual_seed(11))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- planes


def three_points(dim=2000, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, generator=g, dtype=dtype)
    b = a + 0.3 * torch.randn(dim, generator=g, dtype=dtype)
    c = a + 0.2 * torch.randn(dim, generator=g, dtype=dtype) + 0.5 * (b - a)
    return a, b, c


def test_gram_schmidt_plane_distances_and_orthonormality():
    a, b, c = three_points()
    plane = gram_schmidt_plane(a, b, c)
    an, bn, cn = (t.double().numpy() for t in (a, b, c))
    xy = plane.coords
    assert xy.shape == (3, 2)
    np.testing.assert_array_equal(xy[0], [0.0, 0.0])
    assert xy[1, 1] == 0.0 and xy[1, 0] > 0 and xy[2, 1] > 0
    for i, j, p, q in ((0, 1, an, bn), (0, 2, an, cn), (1, 2, bn, cn)):
        assert np.linalg.norm(xy[i] - xy[j]) == pytest.approx(np.linalg.norm(p - q), rel=1e-6, abs=1e-6)
    u, v = plane.u.double().numpy(), plane.v.double().numpy()
    assert plane.u.dtype == torch.float32
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert abs(u @ v) < 1e-6
    # u points from a to b; c - a lies in span(u, v).
    np.testing.assert_allclose(u, (bn - an) / np.linalg.norm(bn - an), atol=1e-6)
    r = (cn - an) - ((cn - an) @ u) * u - ((cn - an) @ v) * v
    assert np.linalg.norm(r) < 1e-5 * np.linalg.norm(cn - an)


def test_plane_point_and_project_round_trip():
    a, b, c = three_points(seed=1)
    plane = gram_schmidt_plane(a, b, c)
    for x, y in ((0.0, 0.0), (0.7, -0.3), (-1.5, 2.25)):
        w = plane.point(x, y)
        assert w.dtype == torch.float32 and w.shape == a.shape
        want = a.double().numpy() + x * plane.u.double().numpy() + y * plane.v.double().numpy()
        np.testing.assert_allclose(w.double().numpy(), want, atol=1e-6)
        px, py, res = plane.project(w)
        assert px == pytest.approx(x, abs=1e-5) and py == pytest.approx(y, abs=1e-5)
        assert res < 1e-5
    # The defining points project onto their coordinates with zero residual.
    for i, t in enumerate((a, b, c)):
        px, py, res = plane.project(t)
        np.testing.assert_allclose([px, py], plane.coords[i], atol=1e-5)
        assert res < 1e-5
    # Batched: arrays in, (P, dim) out; (N, dim) in, arrays out.
    xs, ys = np.array([0.1, -0.4, 1.2]), np.array([0.5, 0.0, -0.8])
    W = plane.point(xs, ys)
    assert W.shape == (3, a.numel())
    torch.testing.assert_close(W[1], plane.point(-0.4, 0.0))
    proj = plane.project(W)
    np.testing.assert_allclose(proj.x, xs, atol=1e-5)
    np.testing.assert_allclose(proj.y, ys, atol=1e-5)
    # A point off the plane: the residual is its true distance (numpy least squares).
    g = torch.Generator().manual_seed(5)
    off = plane.point(0.2, 0.3) + 0.1 * torch.randn(a.numel(), generator=g)
    A = np.stack([plane.u.double().numpy(), plane.v.double().numpy()], 1)
    rhs = off.double().numpy() - a.double().numpy()
    coef, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    p = plane.project(off)
    np.testing.assert_allclose([p.x, p.y], coef, atol=1e-6)
    assert p.residual == pytest.approx(np.linalg.norm(rhs - A @ coef), rel=1e-6)


def test_plane_degenerate_points_are_user_errors():
    a, b, c = three_points(seed=2)
    with pytest.raises(UserError, match="identical"):
        gram_schmidt_plane(a, a.clone(), c)
    with pytest.raises(UserError, match="collinear"):
        gram_schmidt_plane(a, b, a + 2.0 * (b - a))
    with pytest.raises(UserError, match="collinear"):
        gram_schmidt_plane(a, b, a.clone())
    with pytest.raises(UserError, match="collinear"):
        gram_schmidt_plane(a, b, b.clone())
    with pytest.raises(UserError, match="NaN"):
        gram_schmidt_plane(a, b, torch.full_like(c, float("nan")))


def test_plane_with_mask():
    a, b, c = three_points(dim=1000, seed=3)
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[100:600] = True
    plane = gram_schmidt_plane(a, b, c, mask=mask)
    assert not plane.u[~mask].any() and not plane.v[~mask].any()
    m = mask.numpy()
    an, bn, cn = (t.double().numpy()[m] for t in (a, b, c))
    xy = plane.coords
    for i, j, p, q in ((0, 1, an, bn), (0, 2, an, cn), (1, 2, bn, cn)):
        assert np.linalg.norm(xy[i] - xy[j]) == pytest.approx(np.linalg.norm(p - q), rel=1e-6)
    w = plane.point(*xy[1])
    torch.testing.assert_close(w[~mask], a[~mask])
    torch.testing.assert_close(w[mask], b[mask], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- PCA


def anisotropic(T=9, dim=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, dim)) * np.linspace(2.0, 0.2, T)[:, None]
    X += 3.0 * rng.standard_normal(dim)  # a common offset, as in a trajectory
    return X


def numpy_pca(X, center, k):
    c = X.mean(axis=0) if center == "mean" else X[-1]
    Xc = X - c
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    coords = U[:, :k] * s[:k]
    evr = s[:k] ** 2 / np.sum(s ** 2)
    res = np.linalg.norm(Xc - coords @ Vt[:k], axis=1)
    return coords, evr, res, Vt[:k], c


@pytest.mark.parametrize("center", ["mean", "last"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_pca_matches_numpy_svd(center, k):
    X = anisotropic()
    got = pca(torch.from_numpy(X), center=center, k=k)
    coords, evr, res, comps, c = numpy_pca(X, center, k)
    assert got.coords.shape == (X.shape[0], k) and got.components.shape == (k, X.shape[1])
    signs = np.sign(np.sum(got.coords * coords, axis=0))  # numpy's own signs are arbitrary
    np.testing.assert_allclose(got.coords, coords * signs, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(got.explained_variance_ratio, evr, rtol=1e-10)
    np.testing.assert_allclose(got.residual, res, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(got.components.double().numpy(), comps * signs[:, None], atol=1e-6)
    np.testing.assert_allclose(got.center.double().numpy(), c, rtol=1e-6)
    # Unit-norm orthogonal components; coords = centered @ components.T.
    C = got.components.double().numpy()
    np.testing.assert_allclose(C @ C.T, np.eye(k), atol=1e-6)
    np.testing.assert_allclose((X - c) @ C.T, got.coords, rtol=1e-5, atol=1e-4)
    # Sign convention: the largest-magnitude coordinate of every component is positive.
    idx = np.abs(got.coords).argmax(axis=0)
    assert np.all(got.coords[idx, np.arange(k)] > 0)


def test_pca_list_input_chunking_and_float32(monkeypatch):
    X = anisotropic(T=7, dim=1000, seed=1).astype(np.float32)
    ref = pca(torch.from_numpy(X))
    monkeypatch.setattr(D, "_CHUNK_ELEMS", 7 * 37)  # many column chunks, one partial
    chunked = pca([torch.from_numpy(x) for x in X])
    np.testing.assert_allclose(chunked.coords, ref.coords, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked.residual, ref.residual, rtol=1e-10, atol=1e-10)
    coords, evr, res, _, _ = numpy_pca(X.astype(np.float64), "mean", 2)
    signs = np.sign(np.sum(ref.coords * coords, axis=0))
    np.testing.assert_allclose(ref.coords, coords * signs, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ref.explained_variance_ratio, evr, rtol=1e-10)


def test_pca_residual_zero_in_affine_plane():
    rng = np.random.default_rng(2)
    dim, T = 5000, 10
    o = rng.standard_normal(dim) * 4.0
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    xy = rng.standard_normal((T, 2)) * [3.0, 1.0]
    X = o + xy @ basis.T
    got = pca(torch.from_numpy(X))
    scale = np.linalg.norm(X - X.mean(0), axis=1).max()
    assert np.all(got.residual < 1e-9 * scale)
    assert got.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)
    # Coordinates reproduce all pairwise distances (the plane holds everything).
    for i in range(T):
        for j in range(T):
            assert np.linalg.norm(got.coords[i] - got.coords[j]) == pytest.approx(
                np.linalg.norm(X[i] - X[j]), rel=1e-9, abs=1e-9)
    # In float32 the points are planar only up to rounding.
    got32 = pca(torch.from_numpy(X.astype(np.float32)))
    assert np.all(got32.residual < 1e-6 * np.linalg.norm(o))


def test_pca_errors():
    X = torch.from_numpy(anisotropic(T=3, dim=50))
    with pytest.raises(UserError):
        pca(X, k=3)  # 3 points span at most 2 directions
    with pytest.raises(UserError):
        pca(X, center="median")
    with pytest.raises(UserError):
        pca(torch.ones(4, 10))
    Y = X.clone()
    Y[1, 3] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        pca(Y)


def test_pca_mask():
    X = anisotropic(T=6, dim=400, seed=3)
    mask = np.zeros(400, dtype=bool)
    mask[50:250] = True
    got = pca(torch.from_numpy(X), mask=torch.from_numpy(mask))
    coords, evr, res, _, _ = numpy_pca(X[:, mask], "mean", 2)
    signs = np.sign(np.sum(got.coords * coords, axis=0))
    np.testing.assert_allclose(got.coords, coords * signs, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(got.explained_variance_ratio, evr, rtol=1e-10)
    np.testing.assert_allclose(got.residual, res, rtol=1e-8, atol=1e-8)
    assert not got.components[:, ~torch.from_numpy(mask)].any()


def test_time_delay_matches_hand_loop():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 300)).astype(np.float32)
    d1, d2 = time_delay(torch.from_numpy(X))
    assert d1.shape == d2.shape == (6,)
    assert np.isnan(d1[0]) and np.isnan(d2[0]) and np.isnan(d2[1])
    X64 = X.astype(np.float64)
    for t in range(1, 6):
        assert d1[t] == pytest.approx(np.sqrt(np.sum((X64[t] - X64[t - 1]) ** 2)), rel=1e-12)
    for t in range(2, 6):
        assert d2[t] == pytest.approx(np.sqrt(np.sum((X64[t] - X64[t - 2]) ** 2)), rel=1e-12)
    l1, l2 = time_delay([torch.from_numpy(x) for x in X])
    np.testing.assert_array_equal(l1, d1)
    np.testing.assert_array_equal(l2, d2)
    e1, e2 = time_delay(torch.from_numpy(X[:1]))
    assert e1.shape == (1,) and np.isnan(e1).all() and np.isnan(e2).all()

"""Directions in parameter space: random filter-normalized directions, planes through
three points, and PCA of a trajectory.

Everything here works on *points*: flat float vectors over the floating entries of a
state_dict, laid out by :class:`landscape.engine.StateLayout` (entries with ``name``,
``shape``, ``offset``, ``numel`` and ``role`` in {"weight", "bias", "bn", "buffer"}).

* :func:`random_direction` / :func:`random_plane`: Gaussian directions with the
  normalization of Li et al. 2018 ("Visualizing the loss landscape of neural nets").
* :func:`gram_schmidt_plane`: the plane through three points (e.g. three checkpoints),
  with coordinates in parameter-distance units.
* :func:`pca` and :func:`time_delay`: trajectory coordinates (PCA on a (T, dim) stack of
  points; distances to the previous and second-previous point).

Numerics: norms, dot products and the PCA are accumulated in float64; directions and
plane vectors are returned as float32 (the engine's dtype) on the device of their inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.errors import UserError

__all__ = [
    "NORMS",
    "IGNORES",
    "random_direction",
    "ray_directions",
    "surface_directions",
    "random_plane",
    "RandomPlane",
    "orthogonalize",
    "cosine",
    "gram_schmidt_plane",
    "Plane",
    "Projection",
    "pca",
    "PCA",
    "time_delay",
]

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")

# Columns per chunk in the chunked float64 passes of pca(): bounds the float64 working copy
# to about T * _CHUNK_ELEMS / T * 8 bytes = 64 MiB whatever the model size.
_CHUNK_ELEMS = 1 << 23


# ----------------------------------------------------------------------------- random directions


def _check_choice(value: Any, choices: Sequence[str], option: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"unknown {option} {value!r}; choose one of: {', '.join(choices)}")
    return value


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, bool):
        raise TypeError("generator must be a torch.Generator or an int seed, not a bool")
    if isinstance(generator, int):
        return torch.Generator(device="cpu").manual_seed(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            "random directions are drawn on the CPU so that they are the same on every device; "
            f"pass a CPU torch.Generator, not one on {generator.device}"
        )
    return generator


def _check_point(layout: Any, vec: Tensor, what: str) -> None:
    if not isinstance(vec, Tensor) or vec.dim() != 1 or vec.numel() != layout.dim:
        shape = tuple(vec.shape) if isinstance(vec, Tensor) else type(vec).__name__
        raise ValueError(f"{what} must be a flat vector of {layout.dim} values (the layout's dim), got {shape}")
    if not vec.is_floating_point():
        raise ValueError(f"{what} must be a floating-point vector, got {vec.dtype}")


def random_direction(
    layout: Any,
    base: Tensor,
    generator: torch.Generator | int,
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Tensor:
    """A random direction around the point ``base``, normalized as in Li et al. 2018.

    A standard Gaussian vector of ``layout.dim`` float32 values is drawn on the CPU from
    ``generator`` (a CPU ``torch.Generator``, or an int seed for a fresh one), always for the
    whole vector whatever ``norm``/``ignore`` say, so the same generator state gives the same
    direction on every device and the weight part does not depend on ``ignore``. It is then
    normalized per entry of ``layout`` (norms and scales in float64, on ``base``'s device):

    * ``norm="filter"``: each filter of a "weight" entry (the slice along dim 0, i.e. one
      output channel / one output row) is scaled to exactly the norm of the same filter in
      ``base``; a filter that is zero in ``base`` is zero in the direction.
    * ``norm="layer"``: each entry is scaled to the norm of that entry in ``base``.
    * ``norm="none"``: the raw Gaussian.

    "bias" and "bn" entries (1-D biases, norm-layer affine parameters) are zero when
    ``ignore="biasbn"``; with ``ignore="none"`` a 1-D entry's direction is the entry itself
    (d = w, as loss-landscape's ``normalize_directions_for_weights`` does: moving along it
    rescales the entry) under ``filter``/``layer`` normalization, and the raw Gaussian under
    ``none``; a "bn" entry of more dimensions is normalized as one filter. "buffer" entries
    (BatchNorm running statistics) are always zero: buffers are never perturbed.

    Returns a float32 vector of ``layout.dim`` values on ``base``'s device. Unknown
    ``norm``/``ignore`` values raise :class:`UserError`.
    """
    _check_choice(norm, NORMS, "normalization")
    _check_choice(ignore, IGNORES, "ignore option")
    _check_point(layout, base, "base")
    gen = _generator(generator)

    d = torch.randn(layout.dim, generator=gen, dtype=torch.float32, device="cpu").to(base.device)
    out = torch.zeros(layout.dim, dtype=torch.float32, device=base.device)
    for entry in layout.entries:
        role = entry.role
        if role not in ("weight", "bias", "bn", "buffer"):
            raise ValueError(f"layout entry {entry.name!r} has unknown role {role!r}")
        if role == "buffer" or (role != "weight" and ignore == "biasbn") or entry.numel == 0:
            continue  # stays zero
        sl = slice(entry.offset, entry.offset + entry.numel)
        if norm == "none":
            out[sl] = d[sl]
            continue
        if role != "weight" and len(entry.shape) <= 1:  # ignore="none": loss-landscape's d = w
            out[sl] = base[sl].float()
            continue
        # Rows = filters: one per output channel for filter norm on a weight, else one for the entry.
        rows = int(entry.shape[0]) if (norm == "filter" and role == "weight") else 1
        dd = d[sl].reshape(rows, -1).double()
        bb = base[sl].reshape(rows, -1).double()
        dn = torch.linalg.vector_norm(dd, dim=1, keepdim=True)
        bn = torch.linalg.vector_norm(bb, dim=1, keepdim=True)
        scale = torch.where(dn > 0, bn / dn.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(bn))
        out[sl] = (dd * scale).reshape(-1).float()
    return out


def ray_directions(layout: Any, bases: Sequence[Tensor], n_rays: int, seed: int, *, norm: str = "filter",
                   ignore: str = "biasbn") -> list[list[Tensor]]:
    """The directions of ``landscape rays``: ``[checkpoint][ray]``.

    For every base, a fresh CPU generator seeded with ``seed`` draws the rays in order with
    :func:`random_direction`, so ray r is the same Gaussian draw for every checkpoint,
    normalized relative to each one's own weights; with ``norm="none"`` each direction is
    then scaled to unit Euclidean norm (distance = parameter distance).
    """
    out = []
    for base in bases:
        generator = torch.Generator().manual_seed(seed)
        rays = []
        for _ in range(n_rays):
            d = random_direction(layout, base, generator, norm=norm, ignore=ignore)
            rays.append(d / d.norm() if norm == "none" else d)
        out.append(rays)
    return out


def surface_directions(layout: Any, base: Tensor, seed: int, *, norm: str = "filter",
                       ignore: str = "biasbn") -> tuple[Tensor, Tensor]:
    """The two directions of a random ``landscape surface``: u then v, drawn in that order
    from one CPU generator seeded with ``seed`` (unit norm with ``norm="none"``)."""
    generator = torch.Generator().manual_seed(seed)
    u = random_direction(layout, base, generator, norm=norm, ignore=ignore)
    v = random_direction(layout, base, generator, norm=norm, ignore=ignore)
    return (u / u.norm(), v / v.norm()) if norm == "none" else (u, v)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two flat vectors (float64 accumulation); NaN if either is zero."""
    a64, b64 = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = torch.linalg.vector_norm(a64).item(), torch.linalg.vector_norm(b64).item()
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(torch.dot(a64, b64).item() / (na * nb))


def orthogonalize(d: Tensor, against: Sequence[Tensor]) -> Tensor:
    """``d`` minus its projection onto the span of ``against`` (any vectors, not necessarily
    orthonormal; zero ones are skipped). Float64 Gram-Schmidt, applied twice for accuracy;
    returns ``d``'s dtype and device. The norm is NOT restored: rescale if you need it."""
    basis: list[Tensor] = []
    for a in against:
        q = a.reshape(-1).to(device=d.device, dtype=torch.float64)
        if q.numel() != d.numel():
            raise ValueError(f"orthogonalize: vectors of {q.numel()} and {d.numel()} values")
        n0 = torch.linalg.vector_norm(q)
        for _ in range(2):
            for p in basis:
                q = q - torch.dot(q, p) * p
        n = torch.linalg.vector_norm(q)
        if n > 1e-12 * n0 and n > 0:
            basis.append(q / n)
    r = d.reshape(-1).double()
    for _ in range(2):
        for p in basis:
            r = r - torch.dot(r, p) * p
    return r.to(d.dtype).reshape(d.shape)


class RandomPlane(NamedTuple):
    """Two random directions (``x``, ``y``) and the ``cosine`` of the pair as drawn (before
    any orthogonalization; for filter-normalized Gaussians in high dimension it is ~0)."""

    x: Tensor
    y: Tensor
    cosine: float


def random_plane(
    layout: Any,
    base: Tensor,
    generator: torch.Generator | int,
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonal: bool = False,
) -> RandomPlane:
    """Two directions from :func:`random_direction`, drawn one after the other from the same
    generator (so ``x`` equals a first ``random_direction`` call and ``y`` a second one).

    Li et al. keep the two directions as drawn (``orthogonal=False``, the default): in high
    dimension they are nearly orthogonal anyway, and their ``cosine`` is recorded. With
    ``orthogonal=True`` the component of ``y`` along ``x`` is removed and ``y`` is rescaled to
    its drawn norm (its per-filter norms then no longer match ``base`` exactly).
    """
    gen = _generator(generator)
    x = random_direction(layout, base, gen, norm=norm, ignore=ignore)
    y = random_direction(layout, base, gen, norm=norm, ignore=ignore)
    cos = cosine(x, y)
    if orthogonal:
        ny = torch.linalg.vector_norm(y.double())
        y64 = orthogonalize(y.double(), [x])
        nr = torch.linalg.vector_norm(y64)
        if nr == 0:
            raise UserError("the two random directions are parallel; cannot orthogonalize them")
        y = (y64 * (ny / nr)).float()
    return RandomPlane(x, y, cos)


# ----------------------------------------------------------------------------- planes through points


class Projection(NamedTuple):
    """Plane coordinates of a point (or of each of N points) and its distance to the plane."""

    x: Any  # float, or (N,) float64 array
    y: Any
    residual: Any


@dataclass
class Plane:
    """An affine plane ``origin + x u + y v`` in parameter space with orthonormal ``u``, ``v``.

    ``coords`` (3, 2) float64 holds the plane coordinates of the three defining points
    (a, b, c), in parameter-distance units: a = (0, 0), b = (||b - a||, 0), c with y > 0.
    ``mask`` (bool, or None for all entries) is where ``u`` and ``v`` may be nonzero.
    """

    origin: Tensor
    u: Tensor
    v: Tensor
    coords: np.ndarray
    mask: Tensor | None = None

    def point(self, x: Any, y: Any) -> Tensor:
        """``origin + x u + y v`` (float32, on origin's device). Scalars give one (dim,) point;
        equal-length 1-D arrays give a (P, dim) stack, one point per (x[i], y[i])."""
        scalar = np.ndim(x) == 0 and np.ndim(y) == 0
        dev = self.origin.device
        xs = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1), device=dev)
        ys = torch.as_tensor(np.asarray(y, dtype=np.float32).reshape(-1), device=dev)
        if xs.shape != ys.shape:
            raise ValueError(f"point(): x and y must have the same length, got {xs.numel()} and {ys.numel()}")
        out = self.origin.reshape(1, -1).expand(xs.numel(), -1).clone()
        out.addr_(xs, self.u).addr_(ys, self.v)  # one float32 pass: out += outer(x, u) + outer(y, v)
        return out[0] if scalar else out

    def project(self, w: Tensor) -> Projection:
        """Coordinates (x, y) of the orthogonal projection of ``w`` onto the plane, and the
        residual: the Euclidean distance from ``w`` to the plane over the whole vector (entries
        outside ``mask`` count in the residual, since the plane keeps ``origin`` there).
        ``w`` (dim,) gives floats; ``w`` (N, dim) gives (N,) float64 arrays."""
        single = w.dim() == 1
        ws = w.reshape(1, -1) if single else w
        if ws.dim() != 2 or ws.shape[1] != self.origin.numel():
            raise ValueError(f"project(): expected vectors of {self.origin.numel()} values, got {tuple(w.shape)}")
        o, u, v = self.origin.double(), self.u.double(), self.v.double()
        xs, ys, rs = [], [], []
        for row in ws:
            r = row.to(device=o.device, dtype=torch.float64) - o
            x, y = torch.dot(r, u), torch.dot(r, v)
            rs.append(torch.linalg.vector_norm(r - x * u - y * v).item())
            xs.append(x.item())
            ys.append(y.item())
        if single:
            return Projection(xs[0], ys[0], rs[0])
        return Projection(np.array(xs), np.array(ys), np.array(rs))


def gram_schmidt_plane(a: Tensor, b: Tensor, c: Tensor, mask: Tensor | None = None, *, rtol: float = 1e-5) -> Plane:
    """The plane through points ``a``, ``b``, ``c`` (flat vectors of the same length).

    origin = a; u = (b - a) / ||b - a||; v = the normalized part of (c - a) orthogonal to u.
    Coordinates are in parameter-distance units, so the coordinate distances between the three
    points equal their Euclidean distances. With ``mask`` (bool, dim) only the masked entries
    span the plane: u, v are zero elsewhere, the coordinates and distances are those of the
    masked entries, and points of the plane keep a's values outside the mask.

    Identical or (nearly, within angle ``rtol``) collinear points raise :class:`UserError`.
    """
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not isinstance(t, Tensor) or t.dim() != 1 or not t.is_floating_point():
            raise ValueError(f"gram_schmidt_plane: {name} must be a flat floating-point vector")
    if not (a.numel() == b.numel() == c.numel()):
        raise UserError(f"the three points have different sizes ({a.numel()}, {b.numel()}, {c.numel()}); "
                        "are they checkpoints of the same model?")
    dev = a.device
    m = None
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != a.shape:
            raise ValueError("mask must be a bool vector shaped like the points")
        m = mask.to(dev)
        if not bool(m.any()):
            raise UserError("the plane mask selects no entries")
    a64 = a.double()
    db = b.to(dev).double() - a64
    dc = c.to(dev).double() - a64
    if m is not None:
        db = db * m
        dc = dc * m
    if not (torch.isfinite(db).all() and torch.isfinite(dc).all() and torch.isfinite(a64).all()):
        raise UserError("the plane's points contain NaN or inf values (a diverged checkpoint?)")
    nb = torch.linalg.vector_norm(db)
    if nb.item() == 0.0:
        raise UserError("the first two points of the plane are identical; a plane needs three distinct points")
    u = db / nb
    cu = torch.dot(dc, u)
    perp = dc - cu * u
    perp = perp - torch.dot(perp, u) * u  # re-orthogonalize: float64 cancellation
    nc = torch.linalg.vector_norm(dc)
    npp = torch.linalg.vector_norm(perp)
    if nc.item() == 0.0 or npp.item() <= rtol * nc.item():
        raise UserError("the three points are collinear (or two are identical); they do not span a plane")
    v = perp / npp
    coords = np.array([[0.0, 0.0], [nb.item(), 0.0], [cu.item(), torch.dot(dc, v).item()]], dtype=np.float64)
    return Plane(origin=a.detach().to(torch.float32).clone(), u=u.float(), v=v.float(), coords=coords, mask=m)


# ----------------------------------------------------------------------------- trajectories


@dataclass
class PCA:
    """PCA of T points. ``components`` (k, dim) float32 unit-norm, orthogonal rows (a row is
    zero when its singular value is numerically zero); ``coords`` (T, k) float64 =
    centered @ components.T; ``explained_variance_ratio`` (k,) = s_i^2 / sum of all s^2;
    ``residual`` (T,) = norm of each centered point outside the k-plane; ``singular_values``
    (k,); ``center`` (dim,) float32 (the mean, or the last point); ``total_variance`` = sum s^2."""

    components: Tensor
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    residual: np.ndarray
    singular_values: np.ndarray
    center: Tensor
    total_variance: float


def _rows(vectors: Tensor | Sequence[Tensor]) -> tuple[int, int, Any]:
    """(T, dim, column-chunk getter) for a (T, dim) tensor or a sequence of (dim,) tensors."""
    if isinstance(vectors, Tensor):
        if vectors.dim() != 2:
            raise ValueError(f"expected a (T, dim) tensor, got shape {tuple(vectors.shape)}")
        T, dim = vectors.shape
        return T, dim, lambda s, e: vectors[:, s:e].double()
    vs = list(vectors)
    if not vs:
        raise UserError("no points given")
    dim = vs[0].numel()
    for v in vs:
        if v.dim() != 1 or v.numel() != dim:
            raise UserError(f"all points must be flat vectors of the same size ({dim}), got {tuple(v.shape)}")
    dev = vs[0].device
    return len(vs), dim, lambda s, e: torch.stack([v[s:e].to(dev) for v in vs]).double()


def pca(vectors: Tensor | Sequence[Tensor], *, center: str = "mean", k: int = 2, mask: Tensor | None = None) -> PCA:
    """Principal components of T points (a (T, dim) tensor or a list of (dim,) tensors).

    The points are centered on their mean (``center="mean"``) or on the last point
    (``center="last"``, e.g. the final solution). T is small and dim large, so the PCA goes
    through the T x T Gram matrix of the centered points, accumulated in float64 over column
    chunks (memory stays bounded for any model), then ``torch.linalg.eigh``; the components are
    formed in a second chunked pass, which also measures the residuals directly. ``mask``
    (bool, dim) restricts the analysis to some entries (components are zero elsewhere).

    Sign convention (deterministic): each component is oriented so that the coordinate of
    largest magnitude along it is positive (the first such point on ties). Needs
    1 <= k <= T - 1 (centering removes one dimension).
    """
    _check_choice(center, ("mean", "last"), "PCA center")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UserError(f"the number of PCA components must be a positive integer, got {k!r}")
    T, dim, cols = _rows(vectors)
    if k > T - 1:
        raise UserError(f"PCA with {k} components needs at least {k + 1} points, got {T}")
    ex = vectors if isinstance(vectors, Tensor) else vectors[0]
    dev = ex.device
    mcpu = None
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != (dim,):
            raise ValueError("mask must be a bool vector of dim values")
        mcpu = mask.to(dev)
    chunk = max(1, _CHUNK_ELEMS // max(T, 1))

    def centered(s: int, e: int, ctr: Tensor) -> Tensor:
        X = cols(s, e).to(dev) - ctr[s:e]
        if mcpu is not None:
            X = X * mcpu[s:e]
        return X

    # Pass 0: the center.
    ctr = torch.empty(dim, dtype=torch.float64, device=dev)
    for s in range(0, dim, chunk):
        e = min(dim, s + chunk)
        X = cols(s, e).to(dev)
        ctr[s:e] = X.mean(dim=0) if center == "mean" else X[-1]
    # Pass 1: Gram matrix of the centered points.
    G = torch.zeros(T, T, dtype=torch.float64, device=dev)
    for s in range(0, dim, chunk):
        X = centered(s, min(dim, s + chunk), ctr)
        G += X @ X.T
    if not bool(torch.isfinite(G).all()):
        raise UserError("the points contain NaN or inf values (a diverged checkpoint?)")
    G = 0.5 * (G + G.T)
    total = float(torch.trace(G).item())
    if total == 0.0:
        raise UserError("all points are identical; there is no variance to analyse")
    evals, evecs = torch.linalg.eigh(G)  # ascending
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    s2 = evals.clamp_min(0.0)
    sv = s2.sqrt()
    # A component is real only above the noise floor of the Gram route (~eps * s_max^2 in s^2).
    alive = s2 > 1e-13 * max(total, 0.0) * T
    coords = evecs * sv  # (T, k) = U S
    coords[:, ~alive] = 0.0
    # Deterministic signs: the largest-magnitude coordinate of each component is positive.
    idx = coords.abs().argmax(dim=0)
    signs = torch.where(coords[idx, torch.arange(k, device=dev)] < 0, -1.0, 1.0).to(torch.float64)
    coords = coords * signs
    Vk = evecs * signs  # (T, k)
    inv = torch.where(alive, 1.0 / sv.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(sv))
    W = Vk * inv  # components = W.T @ Xc
    # Pass 2: components and residuals.
    comps = torch.empty(k, dim, dtype=torch.float32, device=dev)
    res2 = torch.zeros(T, dtype=torch.float64, device=dev)
    for s in range(0, dim, chunk):
        e = min(dim, s + chunk)
        X = centered(s, e, ctr)
        C = W.T @ X  # (k, chunk) float64
        comps[:, s:e] = C.float()
        res2 += ((X - coords @ C) ** 2).sum(dim=1)
    return PCA(
        components=comps,
        coords=coords.cpu().numpy(),
        explained_variance_ratio=(s2 / total).cpu().numpy() * alive.cpu().numpy(),
        residual=res2.sqrt().cpu().numpy(),
        singular_values=(sv * alive).cpu().numpy(),
        center=ctr.float(),
        total_variance=total,
    )


def time_delay(vectors: Tensor | Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Time-delay coordinates of a trajectory theta_0 .. theta_{T-1} (a (T, dim) tensor or a
    list of (dim,) tensors): ``d1[t] = ||theta_t - theta_{t-1}||`` and
    ``d2[t] = ||theta_t - theta_{t-2}||`` as (T,) float64 arrays (float64 accumulation).
    Undefined entries are NaN: ``d1[0]``, ``d2[0]`` and ``d2[1]``."""
    vs = list(vectors) if not isinstance(vectors, Tensor) else [vectors[i] for i in range(vectors.shape[0])]
    T = len(vs)
    d1 = np.full(T, np.nan)
    d2 = np.full(T, np.nan)

    def dist(p: Tensor, q: Tensor) -> float:
        if p.numel() != q.numel():
            raise UserError(f"points of different sizes ({p.numel()} and {q.numel()})")
        return float(torch.linalg.vector_norm(p.double() - q.to(p.device).double()).item())

    for t in range(1, T):
        d1[t] = dist(vs[t], vs[t - 1])
        if t >= 2:
            d2[t] = dist(vs[t], vs[t - 2])
    return d1, d2

"""Flatness of solutions in numbers: the table a report opens with, and the measures behind it.

The figures of a report (rays, the line between two solutions, lambda_max along it, the
plane through them) each show flatness in their own way; this module reads the same result
files and puts one number per solution and measure in one table:

* test accuracy and train loss at the solution (from a rays result at distance 0),
* lambda_max and the Hessian trace (a single-point sharpness result),
* SAM sharpness ``max_{||e|| <= rho} L(w + e) - L(w)`` (the same sharpness result),
* the ray width: the distance (in the rays result's units: filter-normalised, or Euclidean
  along unit-norm directions as the SWA paper's Fig. 4) at which the train loss, averaged
  over the random rays, has risen by ``rise`` above its value at the solution
  (:func:`ray_width`), one column per normalisation found,

joined by the checkpoints' sha256, and one sentence computed from those numbers saying what
the figures show (:func:`verdict_line`), including where the test loss is lowest on the line
between two solutions and on a plane through them. Nothing here trains or evaluates a model.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.plots.style import _as_list, _text, checkpoint_name

RISE = 0.1  # train-loss rise that defines the ray width (absolute, in nats)


def ray_width(distance: Any, loss: Any, rise: float = RISE) -> tuple[float, bool]:
    """Distance at which the mean over rays of ``loss - loss[:, 0]`` first reaches ``rise``.

    ``distance`` is (D,) increasing from 0, ``loss`` (rays, D). Between grid points the
    crossing is linearly interpolated. Returns ``(width, censored)``: when the mean rise
    stays below ``rise`` over the whole grid the width is the largest distance and
    ``censored`` is True (the true width is larger). Rays with NaN/inf points (diverged)
    count as having risen past ``rise`` there, never as flat. The mean over rays is taken
    first so that one flat ray cannot hide a sharp solution, as in the SWA paper's Fig. 4
    where every ray is drawn.
    """
    d = np.asarray(distance, dtype=np.float64)
    loss = np.atleast_2d(np.asarray(loss, dtype=np.float64))
    rel = loss - loss[:, :1]
    rel = np.where(np.isfinite(rel), rel, np.inf)
    curve = rel.mean(axis=0)
    above = np.nonzero(curve >= rise)[0]
    if above.size == 0:
        return float(d[-1]), True
    k = int(above[0])
    if k == 0:
        return float(d[0]), False
    lo, hi = curve[k - 1], curve[k]
    if not np.isfinite(hi):
        return float(d[k]), False
    return float(d[k - 1] + (rise - lo) / (hi - lo) * (d[k] - d[k - 1])), False


def line_minimum(alpha: Any, loss: Any) -> float:
    """Position of the minimum of ``loss`` along ``alpha``: the grid argmin, refined by the
    parabola through it and its two neighbours when it is an interior point (a grid of
    step 0.1 then locates the minimum to a few hundredths). NaN when nothing is finite."""
    a = np.asarray(alpha, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(y)
    if not ok.any():
        return math.nan
    k = int(np.nanargmin(np.where(ok, y, np.nan)))
    if 0 < k < len(a) - 1 and ok[k - 1] and ok[k + 1]:
        x0, x1, x2 = a[k - 1 : k + 2]
        y0, y1, y2 = y[k - 1 : k + 2]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        A = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        B = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if A > 0:
            return float(np.clip(-B / (2 * A), x0, x2))
    return float(a[k])


@dataclass
class SolutionFlatness:
    """One solution's row of the table (NaN where the files do not say)."""

    name: str
    sha256: str
    test_acc: float = math.nan
    train_loss: float = math.nan
    lambda_max: float = math.nan
    trace: float = math.nan
    trace_stderr: float = math.nan
    sam: float = math.nan
    sam_rho: float = math.nan
    widths: dict[str, tuple[float, bool]] = field(default_factory=dict)  # normalization -> (width, censored)

    def width(self, norm: str) -> float:
        return self.widths.get(norm, (math.nan, False))[0]


@dataclass
class Flatness:
    solutions: list[SolutionFlatness]
    rise: float
    line: dict[str, Any] | None = None  # {"a", "b", "alpha_min", "split"} from an interpolation result
    plane: dict[str, Any] | None = None  # {"split", "distance": {sha: distance of the grid minimum}} from a surface
    sharpness_subset: int | None = None
    ray_units: dict[str, str] = field(default_factory=dict)  # normalization -> units

    @property
    def norms(self) -> list[str]:
        """Ray normalisations present, filter-normalised first."""
        order = {"filter": 0, "layer": 1, "none": 2}
        return sorted(self.ray_units, key=lambda n: order.get(n, 3))


def _f(value: Any) -> float:
    try:
        v = float(np.asarray(value, dtype=np.float64).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return math.nan
    return v


def collect(directory: str | Path, rise: float = RISE) -> Flatness | None:
    """Read every result file under ``directory`` and join the per-solution measures.

    Solutions are the checkpoints of rays results (in their order) and of single-point
    sharpness results. None when no file gives any of the measures.
    """
    from landscape.store import load_result
    from landscape.errors import UserError

    by_sha: dict[str, SolutionFlatness] = {}
    order: list[str] = []
    out = Flatness([], rise)

    def entry(sha: str, path: Any) -> SolutionFlatness:
        if sha not in by_sha:
            by_sha[sha] = SolutionFlatness(checkpoint_name(path), sha)
            order.append(sha)
        return by_sha[sha]

    for p in sorted(Path(directory).rglob("*.h5")):
        try:
            r = load_result(p)
        except UserError:
            continue
        if not r.complete:
            continue
        analysis = _text(r.attrs.get("analysis", ""))
        paths = _as_list(r.attrs.get("checkpoints"))
        shas = [_text(s) for s in _as_list(r.attrs.get("checkpoint_sha256"))]
        if analysis == "rays" and "train" in r.metrics and len(shas) == len(paths):
            distance = np.asarray(r.coords["distance"], dtype=np.float64)
            if distance.size < 2 or distance[0] != 0:
                continue
            norm = _text(r.attrs.get("normalization", "filter"))
            out.ray_units[norm] = _text(r.attrs.get("units", norm))
            for c, (sha, path) in enumerate(zip(shas, paths)):
                s = entry(sha, path)
                train = np.asarray(r.metrics["train"]["loss"], dtype=np.float64)[c]
                s.widths[norm] = ray_width(distance, train, rise)
                s.train_loss = float(train[:, 0].mean())
                if "test" in r.metrics and int(r.attrs.get("subset", -1)) < 0:
                    s.test_acc = float(np.asarray(r.metrics["test"]["accuracy"], dtype=np.float64)[c][:, 0].mean())
        elif analysis == "sharpness" and not r.dims and len(shas) == 1:
            s = entry(shas[0], paths[0] if paths else shas[0][:8])
            ex, xa = r.extra, r.extra_attrs
            if "eigenvalues" in ex:
                s.lambda_max = _f(ex["eigenvalues"])
            if "trace" in ex:
                s.trace, s.trace_stderr = _f(ex["trace"]), _f(ex.get("trace_stderr", math.nan))
            if "sam/ascent" in ex:
                s.sam, s.sam_rho = _f(ex["sam/ascent"]), _f(xa.get("sam/ascent", {}).get("rho", math.nan))
            subset = int(r.attrs.get("subset", -1))
            out.sharpness_subset = None if subset < 0 else subset
        elif analysis == "interpolate" and len(shas) == 2:
            split = "test" if "test" in r.metrics else next(iter(r.metrics), None)
            if split is None:
                continue
            out.line = {"a": shas[0], "b": shas[1], "split": split,
                        "a_name": checkpoint_name(paths[0]), "b_name": checkpoint_name(paths[1]),
                        "alpha_min": line_minimum(r.coords["alpha"], r.metrics[split]["loss"])}
        elif analysis == "surface" and "models/coords" in r.extra and len(shas) == len(r.extra["models/coords"]):
            split = "test" if "test" in r.metrics else next(iter(r.metrics), None)
            if split is None or list(r.dims) != ["y", "x"]:
                continue
            loss = np.asarray(r.metrics[split]["loss"], dtype=np.float64)
            if not np.isfinite(loss).any():
                continue
            j, i = np.unravel_index(int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan))), loss.shape)
            best = np.array([float(r.coords["x"][i]), float(r.coords["y"][j])])
            coords = np.asarray(r.extra["models/coords"], dtype=np.float64)
            out.plane = {"split": split, "distance": {sha: float(np.hypot(*(best - xy)))
                                                      for sha, xy in zip(shas, coords)}}
    out.solutions = [by_sha[s] for s in order]
    has_any = any(np.isfinite([s.lambda_max, s.trace, s.sam]).any() or s.widths for s in out.solutions)
    return out if has_any else None


# Measure name, value, True when larger is flatter.
NORM_NAMES = {"filter": "filter-normalised", "layer": "layer-normalised", "none": "Euclidean"}


def _measures(f: Flatness) -> list[tuple[str, Any, bool]]:
    out: list[tuple[str, Any, bool]] = [("λ_max", lambda s: s.lambda_max, False), ("trace", lambda s: s.trace, False),
                                        ("SAM sharpness", lambda s: s.sam, False)]
    for norm in f.norms:
        label = "ray width" if len(f.norms) == 1 else f"{NORM_NAMES.get(norm, norm)} ray width"
        out.append((label, lambda s, norm=norm: s.width(norm), True))
    return out


def verdict_line(f: Flatness) -> str:
    """One sentence (plain text) on the first two solutions: which is flatter by each measure
    the files hold, with the numbers, and where the minimum of the line between them lies."""
    if len(f.solutions) < 2:
        return ""
    a, b = f.solutions[0], f.solutions[1]
    flatter_b, flatter_a, parts = [], [], []
    for label, value, larger_flatter in _measures(f):
        va, vb = value(a), value(b)
        if not (np.isfinite(va) and np.isfinite(vb)) or va == vb:
            continue
        b_wins = (vb > va) if larger_flatter else (vb < va)
        (flatter_b if b_wins else flatter_a).append(label)
        parts.append(f"{label} {_num(vb)} vs {_num(va)}")
    if not parts:
        return ""
    n = len(flatter_a) + len(flatter_b)
    if not flatter_a:
        head = f"{b.name} is flatter than {a.name} on all {n} measures"
    elif not flatter_b:
        head = f"{b.name} is sharper than {a.name} on all {n} measures"
    else:
        head = (f"mixed: {b.name} is flatter than {a.name} by {', '.join(flatter_b)} "
                f"and sharper by {', '.join(flatter_a)}")
    text = f"{head} ({'; '.join(parts)})"
    if f.line and {f.line["a"], f.line["b"]} == {a.sha256, b.sha256} and np.isfinite(f.line["alpha_min"]):
        am = f.line["alpha_min"] if f.line["a"] == a.sha256 else 1 - f.line["alpha_min"]
        nearer = b.name if am > 0.5 else a.name if am < 0.5 else "neither"
        text += (f"; the {f.line['split']} loss along the line from {a.name} (α = 0) to {b.name} (α = 1) "
                 f"is lowest at α = {am:.2f}, nearer {nearer}")
    if f.plane and a.sha256 in f.plane["distance"] and b.sha256 in f.plane["distance"]:
        da, db = f.plane["distance"][a.sha256], f.plane["distance"][b.sha256]
        text += (f"; on the plane through them the {f.plane['split']} loss is lowest at a distance of {db:.3g} "
                 f"from {b.name} and {da:.3g} from {a.name}")
    return text + "."


def _num(v: float) -> str:
    return "—" if not np.isfinite(v) else f"{v:.4g}"


def section(directory: str | Path, rise: float = RISE) -> list[str]:
    """HTML items for the top of a report: a heading, the table and the one-line summary
    (an empty list when the directory holds none of the measures)."""
    f = collect(directory, rise)
    if f is None:
        return []
    head = ["solution", "test acc. (%)", "train loss", "λ_max", "trace (± s.e.)", "SAM sharpness"]
    head += [f"{html.escape(NORM_NAMES.get(n, n))} ray width at train-loss rise {rise:g}" for n in f.norms]
    body = []
    for s in f.solutions:
        trace = _num(s.trace) + (f" ± {s.trace_stderr:.2g}" if np.isfinite(s.trace_stderr) else "")
        cols = [html.escape(s.name), "—" if not np.isfinite(s.test_acc) else f"{100 * s.test_acc:.2f}",
                _num(s.train_loss), _num(s.lambda_max), trace, _num(s.sam)]
        for n in f.norms:
            w, censored = s.widths.get(n, (math.nan, False))
            cols.append("—" if not np.isfinite(w) else (f"> {w:.3g}" if censored else f"{w:.3g}"))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cols) + "</tr>")
    rho = next((s.sam_rho for s in f.solutions if np.isfinite(s.sam_rho)), math.nan)
    notes = [f"λ_max and trace (Hutch++) of the train loss"
             + (f" on a fixed subset of {f.sharpness_subset} samples" if f.sharpness_subset else ""),
             "SAM sharpness = max over ‖e‖ ≤ ρ of L(w+e) − L(w) by projected ascent"
             + (f", ρ = {rho:g}" if np.isfinite(rho) else ""),
             f"ray width = distance along random rays at which the train loss, averaged over the rays, has risen "
             f"by {rise:g} above its value at the solution (“>”: not reached on the grid)"
             + "".join(f"; {html.escape(NORM_NAMES.get(n, n))}: {html.escape(u)}" for n, u in f.ray_units.items()),
             "test accuracy and train loss at the solution from the rays file (distance 0)"]
    line = verdict_line(f)
    items = ["<h2>Flatness of the solutions</h2>",
             '<table class="summary"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
             + "".join(body) + "</table>",
             f'<p class="caption">{"; ".join(notes)}.</p>']
    if line:
        items.append(f"<p><b>What the figures show:</b> {html.escape(line)}</p>")
    return items

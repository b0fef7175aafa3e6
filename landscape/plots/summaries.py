"""What a result shows, in words: a section title and a one-line takeaway with its numbers.

The report puts these above each figure, so that a reader who only skims the page still
learns what each figure says. Every number comes from the result file itself; nothing is
evaluated here. The text is plain (not HTML): the caller escapes it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from landscape.plots.flatness import RISE, line_minimum, ray_width
from landscape.plots.style import _as_list, _extra, _scalar, _text, checkpoint_name


def describe(result: Any) -> tuple[str, str]:
    """``(title, takeaway)`` for a loaded result; the takeaway may be empty."""
    analysis = _text(result.attrs.get("analysis", ""))
    describer = DESCRIBERS.get(analysis)
    if describer is None:
        return analysis or "result", ""
    try:
        return describer(result)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):  # malformed: the figure says why
        return TITLES.get(analysis, analysis), ""


TITLES = {
    "interpolate": "Loss on the line between two solutions",
    "rays": "Loss along random rays",
    "surface": "Loss surface",
    "segments": "Loss on the segments between checkpoints",
    "twopoint": "Loss of two-point averages",
    "trajectory": "Training trajectory",
    "sharpness": "Hessian sharpness",
    "compare": "Optimizer comparison over seeds",
}


def _names(r: Any) -> list[str]:
    return [checkpoint_name(p) for p in _as_list(r.attrs.get("checkpoints"))]


def _arr(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _g(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _pct(accuracy: float) -> str:
    return "n/a" if not math.isfinite(accuracy) else f"{100 * (1 - accuracy):.2f}%"


def _split(r: Any, prefer: str = "test") -> str | None:
    return prefer if prefer in r.metrics else next(iter(r.metrics), None)


def _at(coord: np.ndarray, value: float) -> int | None:
    hits = np.flatnonzero(np.isclose(coord, value, atol=1e-9))
    return int(hits[0]) if hits.size else None


def _interpolate(r: Any) -> tuple[str, str]:
    a, b = (_names(r) + ["A", "B"])[:2]
    title = f"Loss and error on the line from {a} to {b}"
    split = _split(r)
    if split is None:
        return title, ""
    alpha, loss = _arr(r.coords["alpha"]), _arr(r.metrics[split]["loss"])
    acc = _arr(r.metrics[split]["accuracy"]) if "accuracy" in r.metrics[split] else np.full_like(loss, np.nan)
    parts = []
    i0, i1 = _at(alpha, 0.0), _at(alpha, 1.0)
    if i0 is not None and i1 is not None:
        parts.append(f"{split} loss {_g(loss[i0])} at {a} (α = 0) and {_g(loss[i1])} at {b} (α = 1)"
                     f", {split} error {_pct(acc[i0])} and {_pct(acc[i1])}")
    am = line_minimum(alpha, loss)
    if math.isfinite(am):
        k = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan)))
        edge = " (the end of the grid: the minimum may lie beyond)" if k in (0, len(alpha) - 1) else ""
        parts.append(f"lowest {split} loss {_g(loss[k])} near α = {am:.2f}{edge}")
    bad = int((~np.isfinite(loss)).sum())
    if bad:
        parts.append(f"{bad} point(s) diverged (gaps)")
    return title, "; ".join(parts) + "." if parts else ""


def _rays(r: Any) -> tuple[str, str]:
    names = _names(r)
    n_rays = len(_arr(r.coords.get("ray", [])))
    units = _text(r.attrs.get("units", r.attrs.get("normalization", "")))
    title = f"Loss along {n_rays} random rays from {', '.join(names) or 'the checkpoints'}"
    if "train" not in r.metrics:
        return title, ""
    distance = _arr(r.coords["distance"])
    loss = _arr(r.metrics["train"]["loss"])
    if distance.size < 2 or distance[0] != 0:
        return title, ""
    widths, at_far, at_zero = [], [], []
    for name, curves in zip(names, loss):
        width, censored = ray_width(distance, curves, RISE)
        widths.append(f"{'beyond ' if censored else ''}{width:.3g} from {name}")
        at_far.append(_g(float(np.nanmean(np.where(np.isfinite(curves[:, -1]), curves[:, -1], np.nan)))))
        at_zero.append(_g(float(curves[:, 0].mean())))
    text = (f"the train loss, averaged over the rays, has risen by {RISE:g} at distance {' and '.join(widths)}"
            f"; at distance {distance[-1]:g} it is {' and '.join(at_far)} ({' and '.join(at_zero)} at the solutions)")
    return title, text + (f". Distance: {units}." if units else ".")


def _surface(r: Any) -> tuple[str, str]:
    names = [checkpoint_name(n) for n in _as_list(_extra(r, "models/names"))]
    coords = _extra(r, "models/coords")
    if names and coords is not None:
        title = f"Loss on the plane through {', '.join(names)}"
    else:
        center = (_names(r) or ["the checkpoint"])[0]
        title = f"Loss surface around {center} along two random directions"
    x, y = _arr(r.coords["x"]), _arr(r.coords["y"])
    parts = []
    for split in [s for s in ("train", "test") if s in r.metrics]:
        loss = _arr(r.metrics[split]["loss"]).reshape(len(y), len(x))
        if not np.isfinite(loss).any():
            continue
        j, i = np.unravel_index(int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan))), loss.shape)
        where = f"(x, y) = ({x[i]:.3g}, {y[j]:.3g})"
        if names and coords is not None:
            xy = _arr(coords).reshape(-1, 2)
            dist = np.hypot(xy[:, 0] - x[i], xy[:, 1] - y[j])
            where += f", nearest {names[int(np.argmin(dist))]} ({dist.min():.3g} away)"
        parts.append(f"lowest {split} loss {_g(loss[j, i])} at {where}")
        if split == "test" and "accuracy" in r.metrics[split]:
            acc = _arr(r.metrics[split]["accuracy"]).reshape(len(y), len(x))
            if np.isfinite(acc).any():
                jj, ii = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(acc), acc, np.nan))), acc.shape)
                parts.append(f"lowest test error {_pct(acc[jj, ii])} at ({x[ii]:.3g}, {y[jj]:.3g})")
    return title, "; ".join(parts) + "." if parts else ""


def _segments(r: Any) -> tuple[str, str]:
    epochs = _arr(r.coords.get("epoch", []))
    run = _run_name(r)
    title = f"Loss on the segments between consecutive checkpoints{' of ' + run if run else ''}"
    split = _split(r)
    if split is None:
        return title, ""
    alpha, loss = _arr(r.coords["alpha"]), np.atleast_2d(_arr(r.metrics[split]["loss"]))
    i0, i1 = _at(alpha, 0.0), _at(alpha, 1.0)
    if i0 is None or i1 is None:
        return title, ""
    inside, dips = 0, []
    for s, curve in enumerate(loss):
        if not np.isfinite(curve).any():
            continue
        k = int(np.nanargmin(np.where(np.isfinite(curve), curve, np.nan)))
        ends = min(curve[i0], curve[i1])
        if 0 < alpha[k] < 1 and curve[k] < ends:
            inside += 1
            dips.append((ends - curve[k], s))
    text = f"the {split} loss is lowest strictly inside {inside} of {len(loss)} segments"
    if dips:
        depth, s = max(dips)
        label = (f"epochs {epochs[s]:g}→{epochs[s + 1]:g}" if len(epochs) > s + 1 else f"segment {s}")
        text += f"; deepest dip {_g(depth)} below the better end, on {label}"
    return title, text + "."


def _twopoint(r: Any) -> tuple[str, str]:
    run = _run_name(r)
    units = _text(r.attrs.get("interval_units", "steps"))
    title = f"Loss of the average (θ_ref + θ_ref−k)/2 against the interval k{' (' + run + ')' if run else ''}"
    split = _split(r)
    if split is None:
        return title, ""
    k, loss = _arr(r.coords["interval"]), _arr(r.metrics[split]["loss"])
    if k.size < 2 or not np.isfinite(loss).any() or k[0] != 0:
        return title, ""
    best = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan)))
    if best == 0:
        return title, f"no average beats the reference point itself ({split} loss {_g(loss[0])})."
    return title, (f"{split} loss {_g(loss[0])} at the reference; the average over k = {k[best]:g} {units} "
                   f"is lowest, {_g(loss[best])} ({_g(loss[best] - loss[0])}).")


def _trajectory(r: Any) -> tuple[str, str]:
    run = _run_name(r)
    title = f"Training trajectory{' of ' + run if run else ''} on its first two principal components"
    evr = _extra(r, "pca/explained_variance_ratio")
    parts = []
    if evr is not None and np.size(evr) >= 2:
        e = _arr(evr).ravel()
        parts.append(f"PC1 and PC2 hold {100 * e[0]:.1f}% and {100 * e[1]:.1f}% of the path's variance")
    split = _split(r, "train")
    epochs = _arr(r.coords.get("epoch", []))
    if split is not None and epochs.size:
        loss = _arr(r.metrics[split]["loss"]).ravel()
        if loss.size == epochs.size and loss.size:
            parts.append(f"{split} loss {_g(loss[0])} at epoch {epochs[0]:g}, {_g(loss[-1])} at epoch {epochs[-1]:g}")
    return title, "; ".join(parts) + "." if parts else ""


def _sharpness(r: Any) -> tuple[str, str]:
    lr = _scalar(r.attrs.get("lr"))
    limit = f"; the gradient-descent stability limit 2/lr is {2 / lr:.4g}" if lr else ""
    if "alpha" in (r.coords or {}):
        a, b = (_names(r) + ["A", "B"])[:2]
        title = f"Top Hessian eigenvalue along the line from {a} to {b}"
        split = _text(r.attrs.get("split", "")) or _split(r, "train")
        m = r.metrics.get(split, {})
        if "lambda_max" not in m:
            return title, ""
        alpha, lam = _arr(r.coords["alpha"]), _arr(m["lambda_max"])
        i0, i1 = _at(alpha, 0.0), _at(alpha, 1.0)
        if i0 is None or i1 is None:
            return title, ""
        text = f"λ_max of the {split} loss {_g(lam[i0])} at {a} and {_g(lam[i1])} at {b}"
        if lam[i0] > 0 and lam[i1] > 0 and lam[i0] != lam[i1]:
            sharper, ratio = (a, lam[i0] / lam[i1]) if lam[i0] > lam[i1] else (b, lam[i1] / lam[i0])
            text += f": {sharper} is {ratio:.2g}× as sharp"
        return title, text + limit + "."
    name = (_names(r) or ["the checkpoint"])[0]
    title = f"Hessian spectrum of {name}"
    parts = []
    eig = _extra(r, "eigenvalues")
    if eig is not None and np.size(eig):
        e = _arr(eig).ravel()
        bad = int((~np.isfinite(e)).sum())
        top = f"λ_max {_g(float(e[np.isfinite(e)].max()))}" if bad < e.size else "λ_max n/a"
        parts.append(top + (f" ({bad} of the {e.size} eigenvalues diverged)" if bad else ""))
    trace = _extra(r, "trace")
    if trace is not None:
        se = _extra(r, "trace_stderr")
        parts.append(f"trace {_g(float(_arr(trace)))}" + (f" ± {float(_arr(se)):.2g}" if se is not None else ""))
    sam = _extra(r, "sam/ascent")
    if sam is not None:
        rho = (r.extra_attrs.get("sam/ascent") or {}).get("rho")
        parts.append(f"SAM sharpness {_g(float(_arr(sam)))}" + (f" at ρ = {rho:g}" if rho is not None else ""))
    return title, (", ".join(parts) + limit + ".") if parts else ""


def _compare(r: Any) -> tuple[str, str]:
    optimizers = [_text(v) for v in _as_list(r.coords.get("optimizer", []))]
    kinds = [_text(v) for v in _as_list(r.coords.get("model", []))] or ["last"] * len(optimizers)
    names = [f"{o} ({k})" if k == "averaged" else o for o, k in zip(optimizers, kinds)]
    seeds = _as_list(r.attrs.get("seeds", []))
    title = f"Optimizer comparison over {len(seeds)} seeds: {', '.join(dict.fromkeys(optimizers))}"
    try:
        mean = _arr(r.extra["stats/test_acc/mean"])
    except KeyError:
        return title, ""
    if not np.isfinite(mean).any():
        return title, ""
    best = int(np.nanargmax(mean))
    text = f"highest mean test accuracy: {names[best]} ({100 * mean[best]:.2f}%)"
    baseline = _text(r.attrs.get("baseline", ""))
    if baseline and "stats/test_acc/diff_mean" in r.extra and names[best] != baseline:
        lo, hi = (float(r.extra[f"stats/test_acc/diff_{k}"][best]) for k in ("ci_low", "ci_high"))
        if math.isfinite(lo):
            side = ("above" if lo > 0 else "below" if hi < 0 else "not separable from")
            text += f", {side} {baseline} (paired 95% CI {100 * lo:+.2f} to {100 * hi:+.2f} points)"
    return title, text + "."


def _run_name(r: Any) -> str:
    """The optimizer folder the checkpoints came from (``sgd``), when they share one."""
    paths = [Path(_text(p)) for p in _as_list(r.attrs.get("checkpoints"))]
    parents = {p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name for p in paths}
    return parents.pop() if len(parents) == 1 else ""


DESCRIBERS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "interpolate": _interpolate, "rays": _rays, "surface": _surface, "segments": _segments,
    "twopoint": _twopoint, "trajectory": _trajectory, "sharpness": _sharpness, "compare": _compare,
}

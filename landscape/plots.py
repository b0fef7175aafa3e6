"""Plotly figures from HDF5 results, and self-contained HTML pages that hold them.

This is the only module that draws. It reads result files through
:func:`landscape.store.load_result` and run directories through their ``metrics.jsonl``
files; it never computes a loss.

* :func:`figure` draws one result by its ``analysis`` attribute (interpolate, rays, surface,
  segments, twopoint, trajectory, sharpness, compare);
* :func:`write_html` puts figures (and HTML fragments) on one page with plotly.js embedded
  once, so the file opens offline; :func:`plot_result` does both for one file;
* :func:`metrics_figure` and :func:`report` draw a whole run directory;
* :func:`save_png` exports a static image through kaleido when it is installed.

Conventions every figure follows:

* Non-finite values are never drawn as numbers: NaN and +-inf become gaps (``null`` in the
  figure JSON). A point that was computed (``done``) but is not finite -- a diverged
  point -- additionally gets an ``x`` marker at the top of its panel whose hover says
  ``inf`` or ``NaN``, so a divergence is visible rather than just missing.
* Hover texts carry the exact stored values (shortest round-trip ``repr`` of the float64)
  and coordinates; they come from ``customdata`` strings, not from plotly's rounding.
* Every figure has a title, axis titles with units, and a caption annotation saying what
  was computed (command, data, subset, BN mode, checkpoints); the same caption is kept as
  HTML in ``fig.layout.meta["caption"]``.
* Train is blue and test vermillion (Okabe-Ito colours, safe for colour-blind viewers).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from landscape.errors import UserError

__all__ = ["figure", "write_html", "plot_result", "metrics_figure", "report", "save_png", "caption",
           "ANALYSES"]

# Okabe-Ito, the colour-blind-safe palette; train/test keep their colours everywhere.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
SPLIT_COLORS = {"train": "#0072B2", "test": "#D55E00"}
FONT = dict(family="Inter, Helvetica Neue, Helvetica, Arial, sans-serif", size=15, color="#222")
HEIGHT = 540  # plot area + titles, before the caption lines
CAPTION_LINE_PX = 16
CAPTION_WIDTH = 150  # characters per caption line
DIVERGED = "x-thin-open"
DIVERGED_NAME = "diverged (inf/NaN)"
TOP_MARGIN = 125   # px above the plot area: title, subtitle, legend row, subplot titles
LEGEND_TOP = 68    # px from the top of the figure to the legend row
CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "scrollZoom": False,
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
PAGE_CSS = """
body { font-family: Inter, "Helvetica Neue", Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #fafafa; }
main { max-width: 1500px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 6px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.caption { color: #555; font-size: 14px; line-height: 1.45; margin: 4px 0 16px; }
.figure { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; padding: 8px;
          margin: 12px 0 24px; }
table.summary { border-collapse: collapse; font-size: 15px; margin: 8px 0 16px; background: #fff; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 6px 14px; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
table.summary th { background: #f0f0f0; }
.error { color: #a40000; }
code { font-size: 13px; background: #f0f0f0; padding: 1px 4px; border-radius: 3px; }
footer { color: #888; font-size: 12px; margin-top: 32px; }
"""


# ============================================================================ small helpers

def _gaps(values: Any) -> list:
    """float array -> nested list with None wherever the value is not finite (a gap)."""
    arr = np.asarray(values, dtype=np.float64)
    out = arr.astype(object)
    out[~np.isfinite(arr)] = None
    return out.tolist()


def _exact(value: Any) -> str:
    """The stored value, exactly (shortest round-trip repr); inf/NaN spelled out."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return repr(v)


def _coord(value: Any) -> str:
    """A coordinate for hover: 12 significant digits hides linspace noise (0.30000000000000004)."""
    v = float(value)
    return _exact(v) if not math.isfinite(v) else f"{v:.12g}"


def _strings(values: Any, fmt: Callable[[Any], str] = _exact) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.vectorize(fmt, otypes=[object])(arr) if arr.size else arr.astype(object)


def _error_pct(accuracy: Any) -> np.ndarray:
    return 100.0 * (1.0 - np.asarray(accuracy, dtype=np.float64))


def _finite_range(*arrays: Any) -> tuple[float, float] | None:
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if not vals:
        return None
    allv = np.concatenate(vals)
    return float(allv.min()), float(allv.max())


def _nan_stats(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min, max over finite entries only, and the count of non-finite entries."""
    finite = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are gaps, on purpose
        return (np.nanmean(finite, axis=axis), np.nanmin(finite, axis=axis), np.nanmax(finite, axis=axis),
                (~np.isfinite(values)).sum(axis=axis))


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value.decode() if isinstance(value, bytes) else value]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return [value]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _text(value.tolist())
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def checkpoint_name(path: Any) -> str:
    """A checkpoint as people say it: ``sgd/final.pt``, ``sgd/epoch_0080.pt``."""
    p = Path(_text(path))
    parent = p.parent
    if parent.name == "checkpoints" and parent.parent.name:
        parent = parent.parent
    return f"{parent.name}/{p.name}" if parent.name else p.name


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    return float(arr[0]) if arr.size == 1 else None


def _splits(result: Any) -> list[str]:
    """Splits present in the result, train before test."""
    present = list(getattr(result, "metrics", {}) or {})
    order = {"train": 0, "test": 1}
    return sorted(present, key=lambda s: (order.get(s, 2), s))


def _split_color(split: str, i: int = 0) -> str:
    return SPLIT_COLORS.get(split, PALETTE[(i + 2) % len(PALETTE)])


def _done_mask(result: Any, shape: tuple[int, ...]) -> np.ndarray:
    done = getattr(result, "done", None)
    if done is None:
        return np.ones(shape, bool)
    done = np.asarray(done, bool)
    if done.shape != shape:
        try:
            return np.broadcast_to(done, shape)
        except ValueError:
            return np.ones(shape, bool)
    return done


def _extra(result: Any, *names: str) -> Any:
    extra = getattr(result, "extra", {}) or {}
    for name in names:
        if name in extra:
            return extra[name]
    return None


def _nice_log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (log10 space) and labels (value space) for a log colour/z axis."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi - lo < 1e-12:
        return [lo], [f"{10 ** lo:.3g}"]
    vals = []
    for e in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = math.log10(m) + e
            if lo - 1e-9 <= v <= hi + 1e-9:
                vals.append(v)
    if len(vals) < 3:  # a narrow range: evenly spaced values instead
        vals = list(np.linspace(lo, hi, 5))
    elif len(vals) > 9:
        vals = [v for v in vals if abs(v - round(v)) < 1e-9 or abs(v - round(v) - math.log10(5)) < 1e-9] or vals
    return vals, [f"{10 ** v:.3g}" for v in vals]


# ============================================================================ caption, layout

def _dataset_text(dataset: Any) -> str:
    if isinstance(dataset, str):
        try:
            dataset = json.loads(dataset)
        except ValueError:
            return dataset
    if isinstance(dataset, Mapping):
        name = dataset.get("name", "?")
        options = ", ".join(f"{k}={_text(v)}" for k, v in dataset.items() if k != "name" and v is not None)
        return f"{name} ({options})" if options else str(name)
    return _text(dataset) if dataset is not None else "unknown"


def _subset_text(attrs: Mapping[str, Any]) -> str:
    subset = attrs.get("subset")
    if subset is None or _scalar(subset) is None or _scalar(subset) < 0:
        return "whole splits"
    seed = attrs.get("seed")
    return f"{int(_scalar(subset))} samples per split" + (f" (seed {_text(seed)})" if seed is not None else "")


def caption(result: Any) -> str:
    """What was computed, as HTML lines: command, data, subset, BN mode, checkpoints, provenance."""
    attrs = dict(getattr(result, "attrs", {}) or {})
    lines = []
    command = attrs.get("command")
    if command:
        lines.append(f"<b>command</b> {html.escape(_text(command))}")
    parts = [f"<b>data</b> {html.escape(_dataset_text(attrs.get('dataset')))}",
             f"<b>subset</b> {html.escape(_subset_text(attrs))}"]
    if attrs.get("bn_mode"):
        parts.append(f"<b>BN</b> {html.escape(_text(attrs['bn_mode']))}")
    if attrs.get("normalization"):
        parts.append(f"<b>directions</b> {html.escape(_text(attrs['normalization']))}"
                     + (f", ignore {html.escape(_text(attrs['ignore']))}" if attrs.get("ignore") else ""))
    if attrs.get("seed") is not None:
        parts.append(f"<b>seed</b> {html.escape(_text(attrs['seed']))}")
    if attrs.get("precision"):
        parts.append(f"<b>precision</b> {html.escape(_text(attrs['precision']))}")
    lines.append(" · ".join(parts))
    ckpts = [checkpoint_name(p) for p in _as_list(attrs.get("checkpoints"))]
    if ckpts:
        shown = ckpts if len(ckpts) <= 6 else ckpts[:3] + ["…"] + ckpts[-2:]
        lines.append(f"<b>checkpoints</b> ({len(ckpts)}) " + html.escape(", ".join(shown)))
    prov = []
    path = getattr(result, "path", None)
    if path is not None:
        prov.append(f"file {html.escape(Path(path).name)}")
    for key, label in (("landscape_version", "landscape"), ("torch_version", "torch"), ("created", "created")):
        if attrs.get(key):
            prov.append(f"{label} {html.escape(_text(attrs[key]))}")
    done = getattr(result, "done", None)
    if done is not None and np.size(done) and not np.asarray(done).all():
        missing = int(np.size(done) - np.count_nonzero(done))
        prov.append(f"<b>unfinished: {missing} of {np.size(done)} points not computed yet</b>")
    if prov:
        lines.append(" · ".join(prov))
    return "<br>".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = CAPTION_WIDTH) -> str:
    """Wrap one caption line at spaces (HTML tags are short and never split)."""
    if len(line) <= width:
        return line
    return "<br>&nbsp;&nbsp;".join(textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False))


def _finish(fig: go.Figure, result: Any, title: str, subtitle: str = "", *, height: int = HEIGHT,
            legend_top: bool = True, caption_shift: int = 62, right_margin: int = 40, note: str = "") -> go.Figure:
    """Title, fonts, legend, caption annotation: the parts every result figure shares
    (``note``: HTML lines added to the caption, e.g. how a statistic was computed)."""
    cap = caption(result) if result is not None else ""
    if note:
        cap = "<br>".join([cap] * bool(cap) + [_wrap(line) for line in note.split("<br>")])
    n_lines = cap.count("<br>") + 1 if cap else 0
    cap_px = n_lines * CAPTION_LINE_PX + (6 if cap else 0)
    fig.update_layout(
        template="plotly_white",
        font=FONT,
        height=height + cap_px,
        title=dict(text=f"<b>{title}</b>", subtitle=dict(text=subtitle, font=dict(size=14, color="#555")),
                   x=0.0, xanchor="left", xref="paper", y=1 - 9 / (height + cap_px), yref="container",
                   yanchor="top"),  # 9 px from the top, as the legend row is a fixed number of px below
        margin=dict(l=75, r=right_margin, t=TOP_MARGIN, b=caption_shift + 14 + cap_px),
        hovermode="closest",
        hoverlabel=dict(font=dict(size=13, family=FONT["family"]), align="left"),
        meta={"caption": cap, "title": title},
    )
    if legend_top:
        # A horizontal legend right under the title block (container coordinates, in pixels).
        fig.update_layout(legend=dict(orientation="h", x=0.0, xanchor="left", y=1 - LEGEND_TOP / fig.layout.height,
                                      yanchor="top", yref="container", font=dict(size=14),
                                      bgcolor="rgba(0,0,0,0)"))
    else:
        fig.update_layout(legend=dict(font=dict(size=14), tracegroupgap=4))
    # One legend entry explains the x markers of diverged points.
    first = True
    for trace in fig.data:
        if trace.name == DIVERGED_NAME:
            trace.legendgroup = "diverged"
            trace.showlegend = first
            first = False
    if cap:
        fig.add_annotation(text=cap, xref="paper", yref="paper", x=0, y=0, xanchor="left", yanchor="top",
                           yshift=-caption_shift, showarrow=False, align="left",
                           font=dict(size=12, color="#555"))
    fig.update_xaxes(showline=True, linecolor="#888", mirror=True, ticks="outside", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", mirror=True, ticks="outside", zeroline=False)
    return fig


def _scale_buttons(axes: Sequence[str], x: float = 1.0, y: float = 1.0) -> dict:
    """An updatemenus entry switching the given y axes between linear and log."""
    def args(kind: str) -> dict:
        return {f"{a}.type": kind for a in axes}
    return dict(type="buttons", direction="right", showactive=True, active=0, x=x, xanchor="right",
                y=y, yanchor="bottom", pad=dict(r=0, t=0, b=6), font=dict(size=13),
                buttons=[dict(label="linear", method="relayout", args=[args("linear")]),
                         dict(label="log scale", method="relayout", args=[args("log")])])


def _axis_name(kind: str, row: int, col: int, ncols: int) -> str:
    """Layout name of subplot (row, col)'s axis, e.g. 'yaxis3' (make_subplots numbering)."""
    n = (row - 1) * ncols + col
    return f"{kind}axis" + ("" if n == 1 else str(n))


def _diverged_trace(x: Sequence, values: np.ndarray, done: np.ndarray, y_at: float, *, name: str,
                    color: str, what: str, coords_text: Sequence[str], legendgroup: str,
                    showlegend: bool = False) -> go.Scatter | None:
    """x markers at the top of the panel for computed points that are not finite."""
    values = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) & np.asarray(done, bool))
    if not bad.size:
        return None
    return go.Scatter(
        x=[x[i] for i in bad], y=[y_at] * bad.size, mode="markers", name=name,
        marker=dict(symbol=DIVERGED, size=12, color=color, line=dict(width=2, color=color)),
        customdata=[[_exact(values[i]), coords_text[i]] for i in bad],
        hovertemplate=f"<b>{html.escape(what)} = %{{customdata[0]}}</b> (diverged; drawn as a gap)"
                      "<br>%{customdata[1]}<extra></extra>",
        legendgroup=legendgroup, showlegend=showlegend, cliponaxis=False,
    )


def _top(rng: tuple[float, float] | None) -> float:
    if rng is None:
        return 1.0
    lo, hi = rng
    return hi + 0.04 * (hi - lo if hi > lo else abs(hi) or 1.0)


# ============================================================================ interpolate

def _interpolate(r: Any) -> go.Figure:
    alpha = np.asarray(r.coords["alpha"], dtype=np.float64)
    names = [checkpoint_name(p) for p in _as_list(r.attrs.get("checkpoints"))]
    a_name = names[0] if names else "A"
    b_name = names[1] if len(names) > 1 else "B"
    distance = _scalar(_extra(r, "distance"))
    dist_text = (f"; ‖B − A‖ = {distance:.4g} (Euclidean, trainable parameters)" if distance is not None
                 else "")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss (cross-entropy)", "Error (%)"),
                        horizontal_spacing=0.085)
    done = _done_mask(r, alpha.shape)
    coord_txt = [f"α = {_coord(a)}" for a in alpha]
    panels = [("loss", lambda m: np.asarray(m["loss"], dtype=np.float64), "loss"),
              ("accuracy", lambda m: _error_pct(m["accuracy"]), "error %")]
    for col, (metric, get, label) in enumerate(panels, start=1):
        series = {s: get(r.metrics[s]) for s in _splits(r) if metric in r.metrics[s]}
        rng = _finite_range(*series.values())
        for i, (split, values) in enumerate(series.items()):
            color = _split_color(split, i)
            raw = np.asarray(r.metrics[split][metric], dtype=np.float64)
            extra_txt = (np.char.add("accuracy ", _strings(raw).astype(str)) if metric == "accuracy"
                         else np.full(alpha.shape, ""))
            fig.add_trace(go.Scatter(
                x=alpha.tolist(), y=_gaps(values), mode="lines+markers", name=split, legendgroup=split,
                showlegend=col == 1, line=dict(color=color, width=3),
                marker=dict(size=5, color=color),
                customdata=np.stack([np.array(coord_txt, dtype=object), _strings(values), extra_txt], -1).tolist(),
                hovertemplate=f"<b>{split} {label} = %{{customdata[1]}}</b><br>%{{customdata[0]}}"
                              "<br>%{customdata[2]}<extra></extra>",
            ), row=1, col=col)
            trace = _diverged_trace(alpha.tolist(), values, done, _top(rng), name=DIVERGED_NAME,
                                    color=color, what=f"{split} {metric}", coords_text=coord_txt,
                                    legendgroup="diverged")
            if trace is not None:
                fig.add_trace(trace, row=1, col=col)
        # The endpoints, named after their checkpoints.
        for end, (a, label_name, symbol) in enumerate(((0.0, a_name, "circle"), (1.0, b_name, "diamond"))):
            hit = np.flatnonzero(np.isclose(alpha, a, atol=1e-9))
            xs, ys, texts = [], [], []
            if hit.size:
                for split, values in series.items():
                    v = values[hit[0]]
                    if np.isfinite(v):
                        xs.append(a)
                        ys.append(float(v))
                        texts.append(f"{split} {label} = {_exact(v)}")
            letter = "AB"[end]
            if xs:
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="markers", name=f"{letter} = {label_name}", legendgroup=letter,
                    showlegend=col == 1,
                    marker=dict(symbol=symbol, size=14, color="white", line=dict(width=2.5, color="#222")),
                    customdata=texts,
                    hovertemplate=f"<b>{letter} = {html.escape(label_name)}</b> (α = {a:g})"
                                  "<br>%{customdata}<extra></extra>",
                ), row=1, col=col)
            fig.add_vline(x=a, line=dict(color="#999", width=1.2, dash="dot"), row=1, col=col,
                          annotation=dict(text=f"<b>{letter}</b> {html.escape(label_name)}", font=dict(size=12),
                                          textangle=0, bgcolor="rgba(255,255,255,0.8)"),
                          annotation_position="top left" if end == 0 else "top right")
        fig.update_xaxes(title_text=f"α (0 = A, 1 = B){dist_text}" if col == 1 else "α (0 = A, 1 = B)",
                         row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="error (%)", row=1, col=2)
    fig.update_layout(updatemenus=[_scale_buttons(["yaxis", "yaxis2"], y=1.0)])
    _finish(fig, r, "Linear interpolation between two solutions",
            f"(1 − α)·A + α·B  from  A = {html.escape(a_name)}  to  B = {html.escape(b_name)}")
    _place_buttons(fig)
    return fig


def _place_buttons(fig: go.Figure) -> None:
    """Put the updatemenus on the legend's row, right-aligned, just under the title.

    Update menus only take paper coordinates, so the row's pixel offset is converted."""
    h = fig.layout.height or HEIGHT
    m = fig.layout.margin
    plot_h = max(h - (m.t or 0) - (m.b or 0), 1)
    for menu in fig.layout.updatemenus or ():
        menu.y = 1 + ((m.t or 0) - LEGEND_TOP + 4) / plot_h
        menu.yanchor = "top"


# ============================================================================ rays

RAY_UNITS = {"filter": "filter-normalized units", "layer": "layer-normalized units",
             "none": "Euclidean parameter distance"}


def _rays(r: Any) -> go.Figure:
    distance = np.asarray(r.coords["distance"], dtype=np.float64)
    splits = _splits(r)
    first = r.metrics[splits[0]]["loss"] if splits else np.empty((0, 0, len(distance)))
    shape = np.shape(first)
    if len(shape) == 2:  # a single checkpoint stored without its axis
        shape = (1, *shape)
    n_ckpt, n_rays = shape[0], shape[1]
    names = [checkpoint_name(p) for p in _as_list(r.attrs.get("checkpoints"))]
    names = (names + [f"checkpoint {i}" for i in range(len(names), n_ckpt)])[:n_ckpt]
    done = _done_mask(r, shape)
    has_acc = any("accuracy" in r.metrics[s] for s in splits)
    rows = [("loss", "loss")] + ([("accuracy", "error (%)")] if has_acc else [])
    titles = [f"{s} {label}" for _, label in rows for s in splits]
    fig = make_subplots(rows=len(rows), cols=max(len(splits), 1), subplot_titles=titles,
                        horizontal_spacing=0.08, vertical_spacing=0.14, shared_xaxes=True)
    norm = _text(r.attrs.get("normalization", "")) if r.attrs.get("normalization") is not None else ""
    unit = RAY_UNITS.get(norm, norm or "direction units")
    for row, (metric, label) in enumerate(rows, start=1):
        for col, split in enumerate(splits, start=1):
            if metric not in r.metrics[split]:
                continue
            raw = np.asarray(r.metrics[split][metric], dtype=np.float64).reshape(shape)
            values = _error_pct(raw) if metric == "accuracy" else raw
            rng = _finite_range(values)
            for c in range(n_ckpt):
                color = PALETTE[c % len(PALETTE)]
                group = f"ckpt{c}"
                v = values[c]
                # All rays of a checkpoint in one trace, separated by gaps.
                xs, ys, cd = [], [], []
                for ray in range(n_rays):
                    xs += distance.tolist() + [None]
                    ys += _gaps(v[ray]) + [None]
                    cd += [[str(ray), _coord(d), _exact(val)] for d, val in zip(distance, v[ray])] + [["", "", ""]]
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines", name=f"{names[c]} rays", legendgroup=group, showlegend=False,
                    line=dict(color=_rgba(color, 0.4), width=1), customdata=cd,
                    hovertemplate=f"<b>{html.escape(names[c])}</b>, ray %{{customdata[0]}}<br>distance "
                                  f"%{{customdata[1]}}<br>{split} {label} = %{{customdata[2]}}<extra></extra>",
                ), row=row, col=col)
                mean, lo, hi, bad = _nan_stats(v, axis=0)
                fig.add_trace(go.Scatter(x=distance.tolist(), y=_gaps(lo), mode="lines", line=dict(width=0),
                                         legendgroup=group, showlegend=False, hoverinfo="skip",
                                         name=f"{names[c]} min"), row=row, col=col)
                fig.add_trace(go.Scatter(x=distance.tolist(), y=_gaps(hi), mode="lines", line=dict(width=0),
                                         fill="tonexty", fillcolor=_rgba(color, 0.13), legendgroup=group,
                                         showlegend=False, hoverinfo="skip", name=f"{names[c]} min–max"),
                              row=row, col=col)
                cd_mean = [[_coord(d), _exact(m), _exact(a), _exact(b), f"{int(k)} of {n_rays}"]
                           for d, m, a, b, k in zip(distance, mean, lo, hi, bad)]
                fig.add_trace(go.Scatter(
                    x=distance.tolist(), y=_gaps(mean), mode="lines", name=names[c], legendgroup=group,
                    showlegend=row == 1 and col == 1, line=dict(color=color, width=3.5), customdata=cd_mean,
                    hovertemplate=f"<b>{html.escape(names[c])}</b>: mean over rays<br>distance %{{customdata[0]}}"
                                  f"<br>{split} {label}: mean %{{customdata[1]}}<br>min %{{customdata[2]}}, "
                                  "max %{customdata[3]}<br>non-finite rays: %{customdata[4]}<extra></extra>",
                ), row=row, col=col)
                flat_x = np.tile(distance, n_rays).tolist()
                coord_txt = [f"{names[c]}, ray {ray}, distance {_coord(d)}" for ray in range(n_rays) for d in distance]
                trace = _diverged_trace(flat_x, v.ravel(), done[c].ravel(), _top(rng), name=DIVERGED_NAME,
                                        color=color, what=f"{split} {metric}", coords_text=coord_txt,
                                        legendgroup=group)
                if trace is not None:
                    fig.add_trace(trace, row=row, col=col)
            fig.update_yaxes(title_text=label if col == 1 else None, row=row, col=col)
            if row == len(rows):
                fig.update_xaxes(title_text=f"distance along ray ({unit})", row=row, col=col)
    loss_axes = [_axis_name("y", 1, c, max(len(splits), 1)) for c in range(1, len(splits) + 1)]
    fig.update_layout(updatemenus=[_scale_buttons(loss_axes)])
    _finish(fig, r, "Loss along random rays",
            f"{n_rays} random directions, the same for each of {n_ckpt} checkpoint(s); "
            "thin lines: rays, thick: mean, band: min–max", height=HEIGHT + (220 if has_acc else 0))
    _place_buttons(fig)
    return fig


# ============================================================================ surface

def _grid(r: Any, values: Any, nx: int, ny: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    dims = list(getattr(r, "dims", []) or [])
    if dims == ["x", "y"] or (arr.shape == (nx, ny) and nx != ny):
        arr = arr.T
    return arr.reshape(ny, nx)


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.where(values > 0, values, np.nan))
    return out


def _bilinear(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, px: float, py: float) -> float | None:
    if not (xs.min() <= px <= xs.max() and ys.min() <= py <= ys.max()) or len(xs) < 2 or len(ys) < 2:
        return None
    i = int(np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2))
    j = int(np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2))
    tx = (px - xs[i]) / (xs[i + 1] - xs[i])
    ty = (py - ys[j]) / (ys[j + 1] - ys[j])
    with np.errstate(invalid="ignore", over="ignore"):
        v = ((1 - tx) * (1 - ty) * z[j, i] + tx * (1 - ty) * z[j, i + 1] + (1 - tx) * ty * z[j + 1, i]
             + tx * ty * z[j + 1, i + 1])
    return float(v) if np.isfinite(v) else None


def _label_positions(points: np.ndarray, xs: np.ndarray) -> list[str]:
    """Text sides for marker labels: towards the middle horizontally (so they stay inside the
    panel), alternating above/below so that two close models stay readable."""
    mid = 0.5 * (float(np.nanmin(xs)) + float(np.nanmax(xs)))
    return [f"{'top' if i % 2 == 0 else 'bottom'} {'left' if x > mid else 'right'}"
            for i, x in enumerate(points[:, 0])]


def _surface(r: Any) -> go.Figure:
    xs = np.asarray(r.coords["x"], dtype=np.float64)
    ys = np.asarray(r.coords["y"], dtype=np.float64)
    nx, ny = len(xs), len(ys)
    splits = [s for s in _splits(r) if "loss" in r.metrics[s]]
    ncols = max(len(splits), 1)
    norm = _text(r.attrs.get("normalization")) if r.attrs.get("normalization") is not None else ""
    units = _text(r.attrs.get("units")) if r.attrs.get("units") else RAY_UNITS.get(norm, norm or "direction units")
    short_units = ("parameter distance" if norm == "gram-schmidt" else RAY_UNITS.get(norm, "direction units"))
    fig = make_subplots(rows=1, cols=ncols, subplot_titles=[f"{s} loss" for s in splits] or [""],
                        horizontal_spacing=0.16)
    done = _done_mask(r, (ny, nx))
    losses = {s: _grid(r, r.metrics[s]["loss"], nx, ny) for s in splits}
    logs = {s: _log10(v) for s, v in losses.items()}
    # One colour scale per panel: train and test losses often differ by an order of
    # magnitude, and a shared scale would flatten the contrast of both.
    ranges = {s: _finite_range(v) or (0.0, 1.0) for s, v in logs.items()}
    color_axis = {s: "coloraxis" if i == 0 else f"coloraxis{i + 1}" for i, s in enumerate(splits)}
    gx, gy = np.meshgrid(xs, ys)
    x_txt, y_txt = _strings(gx, _coord), _strings(gy, _coord)
    traces_2d, traces_3d = [], []

    # Models and trajectory projected on the plane.
    model_xy = _extra(r, "models/coords")
    model_names = [checkpoint_name(n) for n in _as_list(_extra(r, "models/names"))]
    if model_xy is not None:
        model_xy = np.asarray(model_xy, dtype=np.float64).reshape(-1, 2)
        model_names = (model_names + [f"model {i}" for i in range(len(model_names), len(model_xy))])[:len(model_xy)]
    elif xs.min() <= 0 <= xs.max() and ys.min() <= 0 <= ys.max():
        # A random plane is centred on its checkpoint.
        center = [checkpoint_name(p) for p in _as_list(r.attrs.get("checkpoints"))][:1] or ["center"]
        model_xy, model_names = np.zeros((1, 2)), center
    path_xy = _extra(r, "trajectory/coords")
    if path_xy is not None:
        path_xy = np.asarray(path_xy, dtype=np.float64).reshape(-1, 2)

    for col, split in enumerate(splits, start=1):
        loss = losses[split]
        acc = _grid(r, r.metrics[split]["accuracy"], nx, ny) if "accuracy" in r.metrics[split] else None
        acc_txt = _strings(acc) if acc is not None else np.full((ny, nx), "n/a", dtype=object)
        cd = np.stack([x_txt, y_txt, _strings(loss), acc_txt], -1).tolist()
        hover = (f"<b>{split} loss = %{{customdata[2]}}</b><br>accuracy %{{customdata[3]}}"
                 "<br>x = %{customdata[0]}, y = %{customdata[1]}<extra></extra>")
        contour = go.Contour(
            x=xs.tolist(), y=ys.tolist(), z=_gaps(logs[split]), coloraxis=color_axis[split], customdata=cd,
            hovertemplate=hover, name=f"{split} loss", showlegend=False, connectgaps=False,
            contours=dict(coloring="heatmap", showlines=True), ncontours=24,
            line=dict(width=0.6, color="rgba(255,255,255,0.55)"),
        )
        fig.add_trace(contour, row=1, col=col)
        traces_2d.append(len(fig.data) - 1)
        scene = "scene" if col == 1 else f"scene{col}"
        fig.add_trace(go.Surface(
            x=xs.tolist(), y=ys.tolist(), z=_gaps(logs[split]), coloraxis=color_axis[split], customdata=cd,
            hovertemplate=hover, name=f"{split} loss", showlegend=False, visible=False, scene=scene,
            contours=dict(z=dict(show=True, usecolormap=True, project=dict(z=True), width=1)),
        ))
        traces_3d.append(len(fig.data) - 1)
        flat_txt = [f"x = {a}, y = {b}" for a, b in zip(x_txt.ravel(), y_txt.ravel())]
        bad = np.flatnonzero(~np.isfinite(loss.ravel()) & done.ravel())
        if bad.size:
            fig.add_trace(go.Scatter(
                x=gx.ravel()[bad].tolist(), y=gy.ravel()[bad].tolist(), mode="markers",
                name=DIVERGED_NAME, legendgroup="diverged", showlegend=col == 1,
                marker=dict(symbol=DIVERGED, size=10, color="#d00", line=dict(width=2, color="#d00")),
                customdata=[[_exact(loss.ravel()[i]), flat_txt[i]] for i in bad],
                hovertemplate=f"<b>{split} loss = %{{customdata[0]}}</b> (diverged; drawn as a gap)"
                              "<br>%{customdata[1]}<extra></extra>",
            ), row=1, col=col)
            traces_2d.append(len(fig.data) - 1)
        if path_xy is not None and len(path_xy):
            fig.add_trace(go.Scatter(
                x=_gaps(path_xy[:, 0]), y=_gaps(path_xy[:, 1]), mode="lines+markers", name="trajectory",
                legendgroup="trajectory", showlegend=col == 1,
                line=dict(color="white", width=2.5),
                marker=dict(size=7, color="white", line=dict(width=1.2, color="#222")),
                customdata=[[str(i), _coord(a), _coord(b)] for i, (a, b) in enumerate(path_xy)],
                hovertemplate="trajectory point %{customdata[0]}<br>x = %{customdata[1]}, y = %{customdata[2]}"
                              "<extra></extra>",
            ), row=1, col=col)
            traces_2d.append(len(fig.data) - 1)
            zpath = [_bilinear(xs, ys, logs[split], a, b) for a, b in path_xy]
            fig.add_trace(go.Scatter3d(
                x=path_xy[:, 0].tolist(), y=path_xy[:, 1].tolist(), z=zpath, mode="lines+markers",
                name="trajectory", legendgroup="trajectory", showlegend=False, visible=False, scene=scene,
                line=dict(color="white", width=5), marker=dict(size=3, color="white"), hoverinfo="skip",
            ))
            traces_3d.append(len(fig.data) - 1)
        if model_xy is not None and len(model_xy):
            cd_m = [[n, _coord(a), _coord(b)] for n, (a, b) in zip(model_names, model_xy)]
            fig.add_trace(go.Scatter(
                x=model_xy[:, 0].tolist(), y=model_xy[:, 1].tolist(), mode="markers+text", name="models",
                legendgroup="models", showlegend=col == 1, text=model_names,
                textposition=_label_positions(model_xy, xs), cliponaxis=False,
                textfont=dict(color="#111", size=13, shadow="0px 0px 3px #fff"),
                marker=dict(symbol="star", size=17, color="#FFD700", line=dict(width=1.5, color="#222")),
                customdata=cd_m,
                hovertemplate="<b>%{customdata[0]}</b><br>x = %{customdata[1]}, y = %{customdata[2]}<extra></extra>",
            ), row=1, col=col)
            traces_2d.append(len(fig.data) - 1)
            zm = [_bilinear(xs, ys, logs[split], a, b) for a, b in model_xy]
            fig.add_trace(go.Scatter3d(
                x=model_xy[:, 0].tolist(), y=model_xy[:, 1].tolist(), z=zm, mode="markers+text", text=model_names,
                name="models", legendgroup="models", showlegend=False, visible=False, scene=scene,
                marker=dict(symbol="diamond", size=6, color="#FFD700", line=dict(width=1, color="#222")),
                customdata=cd_m,
                hovertemplate="<b>%{customdata[0]}</b><br>x = %{customdata[1]}, y = %{customdata[2]}<extra></extra>",
            ))
            traces_3d.append(len(fig.data) - 1)
        fig.update_xaxes(title_text=f"x ({short_units})", row=1, col=col, range=[xs.min(), xs.max()])
        fig.update_yaxes(title_text=f"y ({short_units})" if col == 1 else None, row=1, col=col,
                         range=[ys.min(), ys.max()])
    # Equal units on both axes when the plane is metric (through three models), and a figure
    # only as tall as that aspect needs (a long thin plane would leave a band of white).
    height = HEIGHT + 80
    if norm == "gram-schmidt":
        for col in range(1, ncols + 1):
            fig.update_yaxes(scaleanchor=_axis_name("x", 1, col, ncols).replace("axis", ""), scaleratio=1,
                             constrain="domain", row=1, col=col)
            fig.update_xaxes(constrain="domain", row=1, col=col)
        panel_px = 1200 * (1 - 0.16 * (ncols - 1)) / ncols  # the report's width
        plot_px = height - TOP_MARGIN - 76
        aspect = (ys.max() - ys.min()) / max(xs.max() - xs.min(), 1e-12)
        height -= int(max(0.0, plot_px - max(260.0, panel_px * aspect)))
    for col, split in enumerate(splits, start=1):
        lo, hi = ranges[split]
        tickvals, ticktext = _nice_log_ticks(lo, hi)
        right = fig.layout[_axis_name("x", 1, col, ncols)].domain[1]
        fig.layout[color_axis[split]] = dict(colorscale="Viridis", cmin=lo, cmax=hi, colorbar=dict(
            title=dict(text=f"{split} loss<br>(log scale)", side="top"), tickvals=tickvals, ticktext=ticktext,
            len=0.85, thickness=14, x=right + 0.012, xanchor="left"))

    # 3-D scenes: parked in a corner (they would swallow the contour's hover) until switched to.
    parked = dict(x=[0, 0.0001], y=[0, 0.0001])
    scene_ids = ["scene" if c == 1 else f"scene{c}" for c in range(1, ncols + 1)]
    domains = {}
    for col, sid in enumerate(scene_ids, start=1):
        tickvals, ticktext = _nice_log_ticks(*ranges[splits[col - 1]]) if splits else ([], [])
        z_axis = dict(title="loss", tickvals=tickvals, ticktext=ticktext, tickfont=dict(size=11))
        xa = fig.layout[_axis_name("x", 1, col, ncols)]
        domains[sid] = dict(x=list(xa.domain), y=[0.0, 1.0])
        fig.layout[sid] = dict(domain=parked, xaxis=dict(title="x", tickfont=dict(size=11)),
                               yaxis=dict(title="y", tickfont=dict(size=11)), zaxis=z_axis,
                               aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.75),
                               camera=dict(eye=dict(x=1.45, y=-1.45, z=0.95)))
    n = len(fig.data)
    show_2d = [i in traces_2d for i in range(n)]
    show_3d = [i in traces_3d for i in range(n)]
    xy_axes = [_axis_name(k, 1, c, ncols) for c in range(1, ncols + 1) for k in "xy"]
    layout_2d = {**{f"{a}.visible": True for a in xy_axes}, **{f"{s}.domain": parked for s in scene_ids}}
    layout_3d = {**{f"{a}.visible": False for a in xy_axes}, **{f"{s}.domain": domains[s] for s in scene_ids}}
    menu = dict(type="buttons", direction="right", showactive=True, active=0, x=1.0, xanchor="right",
                y=1.0, yanchor="bottom", font=dict(size=13),
                buttons=[dict(label="contour", method="update", args=[{"visible": show_2d}, layout_2d]),
                         dict(label="3-D surface", method="update", args=[{"visible": show_3d}, layout_3d])])
    fig.update_layout(updatemenus=[menu])
    plane = ("plane through three models (Gram-Schmidt; axes in parameter distance)" if norm == "gram-schmidt"
             else f"two random directions ({units})")
    _finish(fig, r, "Loss surface", f"{plane}; grid {nx} × {ny}; colour: loss on a log scale, per panel",
            height=height, right_margin=70)
    _place_buttons(fig)
    return fig


# ============================================================================ segments

def _segments(r: Any) -> go.Figure:
    alpha = np.asarray(r.coords["alpha"], dtype=np.float64)
    anchors = np.asarray(r.coords.get("epoch", []), dtype=np.float64)
    splits = _splits(r)
    shape = np.shape(r.metrics[splits[0]]["loss"]) if splits else (max(len(anchors) - 1, 0), len(alpha))
    n_seg = shape[0]
    if len(anchors) != n_seg + 1:
        anchors = np.arange(n_seg + 1, dtype=np.float64)
    labels = [f"{int(e)}" if float(e).is_integer() else f"{e:g}" for e in anchors]
    done = _done_mask(r, shape)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss (cross-entropy)", "Error (%)"),
                        horizontal_spacing=0.085)
    xs, coord_txt = [], []
    for s in range(n_seg):
        xs += (s + alpha).tolist() + [None]
        coord_txt += [f"segment θ<sub>{labels[s]}</sub> → θ<sub>{labels[s + 1]}</sub>, α = {_coord(a)}"
                      for a in alpha] + [""]
    flat_x = [x for x in xs if x is not None]
    flat_txt = [t for t in coord_txt if t]
    for col, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "error %")), start=1):
        series = {sp: (_error_pct(r.metrics[sp][metric]) if metric == "accuracy"
                       else np.asarray(r.metrics[sp][metric], dtype=np.float64)).reshape(shape)
                  for sp in splits if metric in r.metrics[sp]}
        rng = _finite_range(*series.values())
        for i, (split, values) in enumerate(series.items()):
            color = _split_color(split, i)
            ys, cd = [], []
            for s in range(n_seg):
                ys += _gaps(values[s]) + [None]
                cd += [[_exact(v)] for v in values[s]] + [[""]]
            cd = [c + [t] for c, t in zip(cd, coord_txt)]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", name=split, legendgroup=split, showlegend=col == 1,
                line=dict(color=color, width=3), customdata=cd,
                hovertemplate=f"<b>{split} {label} = %{{customdata[0]}}</b><br>%{{customdata[1]}}<extra></extra>",
            ), row=1, col=col)
            # The anchors themselves: alpha = 0 of each segment and alpha = 1 of the last.
            ax, ay, acd = [], [], []
            for k in range(n_seg + 1):
                s, j = (k, np.flatnonzero(np.isclose(alpha, 0.0))) if k < n_seg else \
                       (n_seg - 1, np.flatnonzero(np.isclose(alpha, 1.0)))
                if j.size and np.isfinite(values[s, j[0]]):
                    ax.append(float(k))
                    ay.append(float(values[s, j[0]]))
                    acd.append([labels[k], _exact(values[s, j[0]])])
            fig.add_trace(go.Scatter(
                x=ax, y=ay, mode="markers", name=f"{split} anchors", legendgroup=split, showlegend=False,
                marker=dict(size=10, color="white", line=dict(width=2.5, color=color)), customdata=acd,
                hovertemplate=f"<b>θ<sub>%{{customdata[0]}}</sub></b> (epoch %{{customdata[0]}})<br>{split} "
                              f"{label} = %{{customdata[1]}}<extra></extra>",
            ), row=1, col=col)
            trace = _diverged_trace(flat_x, values.ravel(), done.ravel(), _top(rng), name=DIVERGED_NAME,
                                    color=color, what=f"{split} {metric}", coords_text=flat_txt,
                                    legendgroup="diverged")
            if trace is not None:
                fig.add_trace(trace, row=1, col=col)
        for k in range(n_seg + 1):
            fig.add_vline(x=k, line=dict(color="#bbb", width=1, dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text="anchor epoch (segments joining consecutive anchors)",
                         tickvals=list(range(n_seg + 1)), ticktext=[f"θ<sub>{e}</sub>" for e in labels],
                         range=[-0.04 * max(n_seg, 1), n_seg * 1.04 if n_seg else 1], row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="error (%)", row=1, col=2)
    fig.update_layout(updatemenus=[_scale_buttons(["yaxis", "yaxis2"])])
    _finish(fig, r, "Loss along the segments joining checkpoints",
            "(1 − α)·θ<sub>e<sub>i</sub></sub> + α·θ<sub>e<sub>i+1</sub></sub> for anchor epochs "
            + ", ".join(labels))
    _place_buttons(fig)
    return fig


# ============================================================================ twopoint

def _twopoint(r: Any) -> go.Figure:
    interval = np.asarray(r.coords["interval"], dtype=np.float64)
    attrs = r.attrs
    per_epoch = _scalar(attrs.get("steps_per_epoch"))
    granularity = [str(g) for g in _as_list(_extra(r, "granularity", "unit"))]
    unit_attr = _text(attrs.get("unit") or attrs.get("interval_units") or "")
    epochs_x = _extra(r, "interval_epochs")
    if epochs_x is not None and np.shape(epochs_x) == interval.shape:
        x, x_title = np.asarray(epochs_x, dtype=np.float64), "interval k (epochs, log scale)"
    elif per_epoch and (not granularity or "step" in unit_attr or "batch" in unit_attr):
        x, x_title = interval / per_epoch, "interval k (epochs, log scale)"
    elif "epoch" in unit_attr:
        x, x_title = interval, "interval k (epochs, log scale)"
    else:
        x, x_title = interval, f"interval k ({unit_attr or 'steps'}, log scale)"
    if len(granularity) != len(interval):
        granularity = ["ref" if k == 0 else (unit_attr or "interval") for k in interval]
    ref_idx = np.flatnonzero(interval == 0)
    keep = np.flatnonzero(interval > 0)
    order = keep[np.argsort(x[keep])]
    ref = attrs.get("ref_epoch")
    ref_text = f"θ<sub>{_text(ref)}</sub>" if ref is not None else "θ<sub>ref</sub>"
    done = _done_mask(r, interval.shape)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss (cross-entropy)", "Error (%)"),
                        horizontal_spacing=0.085)
    symbols = {"step": "circle-open", "epoch": "circle"}

    def native(i: int) -> str:
        k = interval[i]
        parts = [f"k = {_coord(k)} {'steps' if per_epoch else (unit_attr or '')}".rstrip()]
        if per_epoch:
            parts.append(f"= {_coord(x[i])} epochs")
        parts.append(f"({granularity[i]} checkpoint)")
        return " ".join(parts)

    for col, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "error %")), start=1):
        series = {sp: (_error_pct(r.metrics[sp][metric]) if metric == "accuracy"
                       else np.asarray(r.metrics[sp][metric], dtype=np.float64))
                  for sp in _splits(r) if metric in r.metrics[sp]}
        rng = _finite_range(*series.values())
        for i, (split, values) in enumerate(series.items()):
            color = _split_color(split, i)
            fig.add_trace(go.Scatter(
                x=x[order].tolist(), y=_gaps(values[order]), mode="lines+markers", name=split,
                legendgroup=split, showlegend=col == 1, line=dict(color=color, width=3),
                marker=dict(size=9, color=color, symbol=[symbols.get(granularity[j], "circle") for j in order],
                            line=dict(width=2, color=color)),
                customdata=[[_exact(values[j]), native(j)] for j in order],
                hovertemplate=f"<b>{split} {label} of ½({ref_text} + θ<sub>ref−k</sub>) = %{{customdata[0]}}</b>"
                              "<br>%{customdata[1]}<extra></extra>",
            ), row=1, col=col)
            if ref_idx.size and np.isfinite(values[ref_idx[0]]):
                v = float(values[ref_idx[0]])
                fig.add_trace(go.Scatter(
                    x=[float(x[order].min()), float(x[order].max())] if order.size else [1, 1], y=[v, v],
                    mode="lines", name=f"{ref_text} alone", legendgroup="ref", showlegend=col == 1 and i == 0,
                    line=dict(color=_rgba(color, 0.8), width=2, dash="dash"),
                    customdata=[[_exact(v)]] * 2,
                    hovertemplate=f"<b>{split} {label} of {ref_text} alone = %{{customdata[0]}}</b><extra></extra>",
                ), row=1, col=col)
            trace = _diverged_trace(x[order].tolist(), values[order], done[order], _top(rng),
                                    name=DIVERGED_NAME, color=color, what=f"{split} {metric}",
                                    coords_text=[native(j) for j in order], legendgroup="diverged")
            if trace is not None:
                fig.add_trace(trace, row=1, col=col)
        if per_epoch and "step" in granularity:
            fig.add_vline(x=1.0, line=dict(color="#999", width=1, dash="dot"), row=1, col=col,
                          annotation=dict(text="1 epoch", font=dict(size=12)), annotation_position="top left")
        fig.update_xaxes(type="log", dtick="D2", title_text=x_title, row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="error (%)", row=1, col=2)
    sub = (f"loss of the two-point average ½({ref_text} + θ<sub>ref−k</sub>) over intervals k"
           + ("; open markers: mini-batch steps, filled: epochs" if "step" in granularity else "")
           + (f"; {int(per_epoch)} steps per epoch" if per_epoch else ""))
    _finish(fig, r, "Two-point averages", sub)
    return fig


# ============================================================================ trajectory

def _lr_boundaries(lr: np.ndarray | None) -> list[int]:
    """Indices t where a piecewise-constant LR schedule changes (none for smooth schedules)."""
    if lr is None or len(lr) < 2:
        return []
    lr = np.asarray(lr, dtype=np.float64)
    finite = lr[np.isfinite(lr)]
    if finite.size == 0 or len(np.unique(finite)) > 8:
        return []
    return [t for t in range(1, len(lr)) if np.isfinite(lr[t]) and np.isfinite(lr[t - 1])
            and not np.isclose(lr[t], lr[t - 1], rtol=1e-9, atol=0)]


def _uncrowded(points: np.ndarray, texts: list[str], taken: np.ndarray, min_frac: float = 0.07) -> list[str]:
    """``texts`` with those blanked whose point lies within ``min_frac`` of the axes' span of a
    point already labelled (``taken``, then each kept one): late LR phases of a PCA path
    bunch up at its end. The markers stay; hover still names them."""
    everything = np.vstack([points, taken]) if len(taken) else points
    span = np.ptp(everything, axis=0) if len(everything) > 1 else np.ones(2)
    span = np.where(span > 0, span, 1.0)
    kept, out = [p for p in taken], []
    for p, text in zip(points, texts):
        crowded = any(np.all(np.abs((p - q) / span) < min_frac) for q in kept)
        out.append("" if crowded else text)
        if not crowded:
            kept.append(p)
    return out


def _trajectory(r: Any) -> go.Figure:
    epochs = np.asarray(r.coords.get("epoch", []), dtype=np.float64)
    coords = _extra(r, "pca/coords")
    if coords is None:
        raise UserError(f"{r.path}: trajectory result without pca/coords")
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    T = len(coords)
    if len(epochs) != T:
        epochs = np.arange(T, dtype=np.float64)
    evr = _extra(r, "pca/explained_variance_ratio")
    evr = np.asarray(evr, dtype=np.float64).ravel() if evr is not None else np.full(2, np.nan)
    residual = _extra(r, "pca/residual")
    residual = np.asarray(residual, dtype=np.float64).ravel() if residual is not None else np.full(T, np.nan)
    d1, d2 = _extra(r, "timedelay/d1"), _extra(r, "timedelay/d2")
    lr = _extra(r, "lr")
    lr = np.asarray(lr, dtype=np.float64).ravel() if lr is not None and np.size(lr) == T else None
    boundaries = _lr_boundaries(lr)
    ep_txt = [f"{int(e)}" if float(e).is_integer() else f"{e:g}" for e in epochs]

    def per_epoch(split: str, metric: str) -> np.ndarray | None:
        m = (r.metrics.get(split) or {}).get(metric)
        return np.asarray(m, dtype=np.float64).ravel() if m is not None and np.size(m) == T else None

    hover_rows = []
    for t in range(T):
        row = [ep_txt[t], _exact(coords[t, 0]), _exact(coords[t, 1]),
               _exact(residual[t]) if t < len(residual) else "n/a",
               _exact(lr[t]) if lr is not None else "n/a"]
        extras = []
        for split in _splits(r):
            loss, acc = per_epoch(split, "loss"), per_epoch(split, "accuracy")
            if loss is not None:
                extras.append(f"{split} loss {_exact(loss[t])}")
            if acc is not None:
                extras.append(f"{split} accuracy {_exact(acc[t])}")
        row.append("<br>".join(extras))
        hover_rows.append(row)
    base_hover = ("<b>epoch %{customdata[0]}</b> (lr %{customdata[4]})<br>PC1 %{customdata[1]}, PC2 %{customdata[2]}"
                  "<br>distance from the PCA plane %{customdata[3]}<br>%{customdata[5]}")

    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.14,
                        subplot_titles=("PCA of the trajectory", "Time-delay coordinates"))
    # Loss on the PCA plane under the path.
    sx, sy = _extra(r, "surface/x"), _extra(r, "surface/y")
    sz = _extra(r, "surface/train/loss", "surface/test/loss")
    has_surface = sx is not None and sy is not None and sz is not None
    if has_surface:
        sx, sy = np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)
        zsplit = "train" if _extra(r, "surface/train/loss") is not None else "test"
        sz = np.asarray(sz, dtype=np.float64).reshape(len(sy), len(sx))
        zlog = _log10(sz)
        zr = _finite_range(zlog) or (0.0, 1.0)
        tv, tt = _nice_log_ticks(*zr)
        gx, gy = np.meshgrid(sx, sy)
        fig.add_trace(go.Contour(
            x=sx.tolist(), y=sy.tolist(), z=_gaps(zlog), coloraxis="coloraxis", name=f"{zsplit} loss",
            showlegend=False, contours=dict(coloring="heatmap", showlines=True), ncontours=20,
            line=dict(width=0.6, color="rgba(80,80,80,0.35)"), connectgaps=False,
            customdata=np.stack([_strings(gx, _coord), _strings(gy, _coord), _strings(sz)], -1).tolist(),
            hovertemplate=f"<b>{zsplit} loss = %{{customdata[2]}}</b><br>PC1 %{{customdata[0]}}, "
                          "PC2 %{customdata[1]}<extra></extra>",
        ), row=1, col=1)
        fig.update_layout(coloraxis=dict(
            colorscale=[[0, "#9ecae1"], [0.5, "#deebf7"], [1, "#ffffff"]], cmin=zr[0], cmax=zr[1],
            colorbar=dict(title=dict(text=f"{zsplit} loss", side="top"), tickvals=tv, ticktext=tt, x=0.515,
                          xanchor="left", len=0.8, thickness=12)))
    epoch_axis = dict(colorscale="Viridis", cmin=float(epochs.min()), cmax=float(epochs.max()),
                      colorbar=dict(title=dict(text="epoch", side="top"), x=1.0, xanchor="left", len=0.8,
                                    thickness=14))
    fig.update_layout(coloraxis2=epoch_axis)
    ok = np.isfinite(coords).all(axis=1)
    fig.add_trace(go.Scatter(
        x=_gaps(coords[:, 0]), y=_gaps(coords[:, 1]), mode="lines+markers", name="trajectory",
        line=dict(color="rgba(60,60,60,0.55)", width=1.6),
        marker=dict(size=8, color=epochs.tolist(), coloraxis="coloraxis2", line=dict(width=0.6, color="#333")),
        customdata=hover_rows, hovertemplate=base_hover + "<extra></extra>", legendgroup="path",
    ), row=1, col=1)
    # Start and end labelled.
    ends = [t for t in (0, T - 1) if ok[t]] if T else []
    if ends:
        fig.add_trace(go.Scatter(
            x=[coords[t, 0] for t in ends], y=[coords[t, 1] for t in ends], mode="markers+text",
            text=[f"epoch {ep_txt[t]}" + (" (init)" if epochs[t] == 0 else "") for t in ends],
            textposition="bottom center", textfont=dict(size=13), name="start / end", showlegend=False,
            marker=dict(size=13, symbol=["circle-open", "square-open"][: len(ends)], color="#222",
                        line=dict(width=2)),
            customdata=[hover_rows[t] for t in ends], hovertemplate=base_hover + "<extra></extra>",
        ), row=1, col=1)
    if boundaries:
        bx = [t for t in boundaries if ok[t]]
        labels = _uncrowded(coords[bx], [f"lr → {lr[t]:g}" for t in bx], coords[ends] if ends else np.empty((0, 2)))
        fig.add_trace(go.Scatter(
            x=[coords[t, 0] for t in bx], y=[coords[t, 1] for t in bx], mode="markers+text",
            text=labels, textposition="top center", textfont=dict(size=13),
            name="LR phase starts", legendgroup="phase",
            marker=dict(symbol="diamond", size=15, color="#E69F00", line=dict(width=1.5, color="#222")),
            customdata=[hover_rows[t] for t in bx],
            hovertemplate="<b>new LR phase</b><br>" + base_hover + "<extra></extra>",
        ), row=1, col=1)
    # Time-delay plot.
    if d1 is not None and d2 is not None and np.size(d1) == T and np.size(d2) == T:
        d1, d2 = np.asarray(d1, dtype=np.float64).ravel(), np.asarray(d2, dtype=np.float64).ravel()
        td_rows = [row + [_exact(a), _exact(b)] for row, a, b in zip(hover_rows, d1, d2)]
        td_hover = ("<b>epoch %{customdata[0]}</b> (lr %{customdata[4]})<br>‖θ<sub>t</sub> − θ<sub>t−1</sub>‖ "
                    "%{customdata[6]}<br>‖θ<sub>t</sub> − θ<sub>t−2</sub>‖ %{customdata[7]}<br>%{customdata[5]}"
                    "<extra></extra>")
        fig.add_trace(go.Scatter(
            x=_gaps(d1), y=_gaps(d2), mode="lines+markers", name="time delay", showlegend=False,
            line=dict(color="rgba(60,60,60,0.45)", width=1.4),
            marker=dict(size=8, color=epochs.tolist(), coloraxis="coloraxis2", line=dict(width=0.6, color="#333")),
            customdata=td_rows, hovertemplate=td_hover,
        ), row=1, col=2)
        bx = [t for t in boundaries if np.isfinite(d1[t]) and np.isfinite(d2[t])]
        if bx:
            td = np.stack([d1, d2], -1)
            labels = _uncrowded(td[bx], [f"lr → {lr[t]:g}" for t in bx], np.empty((0, 2)))
            fig.add_trace(go.Scatter(
                x=[d1[t] for t in bx], y=[d2[t] for t in bx], mode="markers+text",
                text=labels, textposition="top center", textfont=dict(size=13),
                name="LR phase starts", legendgroup="phase", showlegend=False,
                marker=dict(symbol="diamond", size=15, color="#E69F00", line=dict(width=1.5, color="#222")),
                customdata=[td_rows[t] for t in bx], hovertemplate=td_hover,
            ), row=1, col=2)
    pct = [f"{100 * v:.1f}% of variance" if np.isfinite(v) else "variance n/a" for v in (list(evr) + [np.nan] * 2)[:2]]
    fig.update_xaxes(title_text=f"PC1 ({pct[0]}; parameter distance)", row=1, col=1)
    fig.update_yaxes(title_text=f"PC2 ({pct[1]})", row=1, col=1)
    fig.update_xaxes(title_text="‖θ<sub>t</sub> − θ<sub>t−1</sub>‖", row=1, col=2)
    fig.update_yaxes(title_text="‖θ<sub>t</sub> − θ<sub>t−2</sub>‖", row=1, col=2)
    if has_surface:
        fig.update_xaxes(range=[float(sx.min()), float(sx.max())], row=1, col=1)
        fig.update_yaxes(range=[float(sy.min()), float(sy.max())], row=1, col=1)
    layer = r.attrs.get("layer")
    sub = (f"{T} checkpoints, epochs {ep_txt[0]}–{ep_txt[-1]}" if T else "no checkpoints") + \
          (f"; weights: {html.escape(_text(layer))}" if layer else "") + \
          (f"; LR phases start at epoch {', '.join(ep_txt[t] for t in boundaries)}" if boundaries else "") + \
          ("; background: loss on the PCA plane" if has_surface else "")
    _finish(fig, r, "Optimization trajectory", sub, right_margin=90)
    return fig


# ============================================================================ sharpness

def _sharpness_along(r: Any) -> go.Figure:
    """``sharpness --along line.h5``: lambda_max (and trace / SAM sharpness) at every alpha."""
    alpha = np.asarray(r.coords["alpha"], dtype=np.float64)
    split = _text(r.attrs.get("split", "")) or (_splits(r) or ["train"])[0]
    m = r.metrics.get(split, {})
    lr = _scalar(r.attrs.get("lr"))
    limit = 2.0 / lr if lr and lr > 0 else None
    names = [checkpoint_name(p) for p in _as_list(r.attrs.get("checkpoints"))]
    a_name, b_name = (names + ["A", "B"])[:2] if len(names) < 2 else names[:2]
    right = next((k for k in ("trace", "sam_ascent", "loss") if k in m), None)
    right_title = {"trace": "Hessian trace (± 1 s.e.)", "sam_ascent": "SAM sharpness",
                   "loss": f"{split} loss"}.get(right or "", "")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Top Hessian eigenvalue λ<sub>max</sub>", right_title),
                        horizontal_spacing=0.1)
    coord_txt = [f"α = {_coord(a)}" for a in alpha]

    def line(values: np.ndarray, name: str, color: str, col: int, err: np.ndarray | None = None) -> None:
        values = np.asarray(values, dtype=np.float64)
        fig.add_trace(go.Scatter(
            x=alpha.tolist(), y=_gaps(values), mode="lines+markers", name=name, line=dict(color=color, width=3),
            marker=dict(size=6, color=color),
            error_y=dict(type="data", array=_gaps(err), visible=True, color=color) if err is not None else None,
            customdata=np.stack([np.array(coord_txt, dtype=object), _strings(values)], -1).tolist(),
            hovertemplate=f"<b>{html.escape(name)} = %{{customdata[1]}}</b><br>%{{customdata[0]}}<extra></extra>",
        ), row=1, col=col)

    if "lambda_max" in m:
        line(m["lambda_max"], "λ_max", PALETTE[0], 1)
    if "lambda_min" in m:
        line(m["lambda_min"], "λ_min", PALETTE[3], 1)
    if right == "trace":
        line(m["trace"], "trace", PALETTE[2], 2, m.get("trace_stderr"))
    elif right is not None:
        line(m[right], right_title, PALETTE[2], 2)
    lam = np.asarray(m.get("lambda_max", []), dtype=np.float64)
    top = float(np.nanmax(np.where(np.isfinite(lam), lam, np.nan))) if np.isfinite(lam).any() else None
    if limit is not None and top is not None and top > 0 and limit > 4 * top:  # would squash the curve
        fig.add_annotation(text=f"2/lr = {limit:.4g} (off scale: {limit / top:.0f}× the largest λ<sub>max</sub>)",
                           xref="x domain", yref="y domain", x=0.98, y=0.9, xanchor="right", yanchor="top",
                           showarrow=False, font=dict(size=13, color="#D55E00"))
    elif limit is not None:
        fig.add_hline(y=limit, line=dict(color="#D55E00", width=2, dash="dash"), row=1, col=1,
                      annotation=dict(text=f"2/lr = {limit:.4g}", font=dict(size=13, color="#D55E00")),
                      annotation_position="top right")
    for col in (1, 2):
        for a, letter, label in ((0.0, "A", a_name), (1.0, "B", b_name)):
            if alpha.size and alpha.min() <= a <= alpha.max():
                fig.add_vline(x=a, line=dict(color="#999", width=1.2, dash="dot"), row=1, col=col,
                              annotation=dict(text=f"<b>{letter}</b> {html.escape(label)}", font=dict(size=12)),
                              annotation_position="top left" if a == 0 else "top right")
        fig.update_xaxes(title_text="α (0 = A, 1 = B)", row=1, col=col)
    fig.update_yaxes(title_text="eigenvalue of the loss Hessian", row=1, col=1)
    fig.update_yaxes(title_text=right_title, row=1, col=2)
    sub = f"(1 − α)·A + α·B from A = {html.escape(a_name)} to B = {html.escape(b_name)}; {html.escape(split)} loss"
    if limit is not None:
        sub += f"; stability limit 2/lr = {limit:.4g} (lr = {lr:g})"
    _finish(fig, r, "Sharpness along a line", sub)
    return fig


def _sharpness_layers(fig: go.Figure, r: Any, row: int) -> None:
    """Per-module bars (``--by-layer``): lambda_max of each diagonal Hessian block, and its trace."""
    labels = [_text(n) for n in _as_list(_extra(r, "by_layer/names"))]
    lam = np.asarray(_extra(r, "by_layer/lambda_max"), dtype=np.float64).ravel()
    fig.add_trace(go.Bar(x=labels, y=_gaps(lam), name="λ_max per module", marker_color=PALETTE[0],
                         customdata=[_exact(v) for v in lam], offsetgroup="lam",
                         hovertemplate="%{x}<br><b>λ_max = %{customdata}</b><extra></extra>"), row=row, col=1)
    tr = _extra(r, "by_layer/trace")
    if tr is not None:
        tr = np.asarray(tr, dtype=np.float64).ravel()
        err = _extra(r, "by_layer/trace_stderr")
        fig.add_trace(go.Bar(x=labels, y=_gaps(tr), name="trace per module", marker_color=PALETTE[2],
                             offsetgroup="trace",
                             error_y=dict(type="data", array=_gaps(err)) if err is not None else None,
                             customdata=[_exact(v) for v in tr],
                             hovertemplate="%{x}<br><b>trace = %{customdata}</b><extra></extra>"), row=row, col=1)
    fig.update_xaxes(title_text="module (diagonal block of the Hessian)", row=row, col=1)
    fig.update_yaxes(title_text="λ_max / trace of the block", row=row, col=1)


def _sharpness(r: Any) -> go.Figure:
    if "alpha" in (getattr(r, "coords", None) or {}):
        return _sharpness_along(r)
    eig = _extra(r, "eigenvalues")
    eig = np.asarray(eig, dtype=np.float64).ravel() if eig is not None else np.empty(0)
    trace_v = _scalar(_extra(r, "trace"))
    grid, dens = _extra(r, "density/grid"), _extra(r, "density/values")
    lr = _scalar(r.attrs.get("lr"))
    if lr is None:
        lr = _scalar(_extra(r, "lr"))
    limit = 2.0 / lr if lr and lr > 0 else None
    layers = _extra(r, "by_layer/lambda_max") is not None and _extra(r, "by_layer/names") is not None
    if layers:
        fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]], row_heights=[0.6, 0.4],
                            vertical_spacing=0.16, horizontal_spacing=0.1,
                            subplot_titles=("Top Hessian eigenvalues", "Spectral density", "By module"))
        _sharpness_layers(fig, r, 2)
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Top Hessian eigenvalues", "Spectral density"),
                            horizontal_spacing=0.1)
    order = np.argsort(-np.where(np.isfinite(eig), eig, -np.inf)) if eig.size else np.empty(0, int)
    idx = np.arange(1, eig.size + 1)
    fig.add_trace(go.Scatter(
        x=idx.tolist(), y=_gaps(eig[order]), mode="markers+lines", name="eigenvalues",
        line=dict(color=PALETTE[0], width=1.5), marker=dict(size=10, color=PALETTE[0]),
        customdata=[[str(i), _exact(v)] for i, v in zip(idx, eig[order])],
        hovertemplate="<b>λ<sub>%{customdata[0]}</sub> = %{customdata[1]}</b><extra></extra>",
    ), row=1, col=1)
    bad = np.flatnonzero(~np.isfinite(eig[order])) if eig.size else np.empty(0, int)
    if bad.size:
        rng = _finite_range(eig)
        fig.add_trace(go.Scatter(
            x=(idx[bad]).tolist(), y=[_top(rng)] * bad.size, mode="markers", name=DIVERGED_NAME,
            marker=dict(symbol=DIVERGED, size=12, color="#d00", line=dict(width=2, color="#d00")),
            customdata=[[str(idx[i]), _exact(eig[order][i])] for i in bad],
            hovertemplate="<b>λ<sub>%{customdata[0]}</sub> = %{customdata[1]}</b> (drawn as a gap)<extra></extra>",
        ), row=1, col=1)
    # A limit far above the spectrum (small final lr) would squash the eigenvalues into a
    # flat line: then it is stated in the panel instead of drawn.
    top_eig = float(np.nanmax(np.where(np.isfinite(eig), eig, np.nan))) if np.isfinite(eig).any() else None
    off_scale = limit is not None and top_eig is not None and top_eig > 0 and limit > 4 * top_eig
    if limit is not None and not off_scale:
        fig.add_hline(y=limit, line=dict(color="#D55E00", width=2, dash="dash"), row=1, col=1,
                      annotation=dict(text=f"2/lr = {limit:.4g}", font=dict(size=13, color="#D55E00")),
                      annotation_position="top right")
    elif off_scale:
        ratio = limit / top_eig
        fig.add_annotation(text=f"2/lr = {limit:.4g} (off scale: {ratio:.0f}× λ<sub>max</sub>)",
                           xref="x domain", yref="y domain", x=0.98, y=0.98, xanchor="right", yanchor="top",
                           showarrow=False, font=dict(size=13, color="#D55E00"))
    if grid is not None and dens is not None and np.size(grid) == np.size(dens):
        g, d = np.asarray(grid, dtype=np.float64).ravel(), np.asarray(dens, dtype=np.float64).ravel()
        d_draw = np.where(d > 0, d, np.nan)  # a log axis has no zero; zeros are gaps
        fig.add_trace(go.Scatter(
            x=_gaps(g), y=_gaps(d_draw), mode="lines", name="density", line=dict(color=PALETTE[2], width=2.5),
            fill="tozeroy", fillcolor=_rgba(PALETTE[2], 0.15),
            customdata=[[_exact(a), _exact(b)] for a, b in zip(g, d)],
            hovertemplate="eigenvalue %{customdata[0]}<br><b>density %{customdata[1]}</b><extra></extra>",
        ), row=1, col=2)
        fig.update_yaxes(type="log", row=1, col=2)
        if eig.size and np.isfinite(eig).any():
            finite = eig[np.isfinite(eig)]
            pos = d_draw[np.isfinite(d_draw)]
            y0 = float(pos.min()) if pos.size else 1e-6
            fig.add_trace(go.Scatter(
                x=finite.tolist(), y=[y0] * finite.size, mode="markers", name="top eigenvalues",
                marker=dict(symbol="line-ns-open", size=16, color=PALETTE[0], line=dict(width=2)),
                customdata=[_exact(v) for v in finite], hovertemplate="λ = %{customdata}<extra></extra>",
            ), row=1, col=2)
    if limit is not None and not off_scale:
        fig.add_vline(x=limit, line=dict(color="#D55E00", width=2, dash="dash"), row=1, col=2,
                      annotation=dict(text=f"2/lr = {limit:.4g}", font=dict(size=13, color="#D55E00")),
                      annotation_position="top left")
    fig.update_xaxes(title_text="rank", row=1, col=1)
    fig.update_yaxes(title_text="eigenvalue of the loss Hessian", row=1, col=1)
    fig.update_xaxes(title_text="eigenvalue", row=1, col=2)
    fig.update_yaxes(title_text="density (log scale)", row=1, col=2)
    parts = []
    if trace_v is not None:
        parts.append(f"trace = {trace_v:.6g}")
    if eig.size and np.isfinite(eig).any():
        parts.append(f"λ<sub>max</sub> = {np.nanmax(np.where(np.isfinite(eig), eig, np.nan)):.6g}")
    if limit is not None:
        parts.append(f"stability limit 2/lr = {limit:.4g} (lr = {lr:g})")
    else:
        parts.append("no lr recorded, so no 2/lr line")
    _finish(fig, r, "Sharpness: Hessian spectrum", "; ".join(parts), height=HEIGHT + (380 if layers else 0))
    return fig


# ============================================================================ compare

def _t_half_width(std: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """Half-width of the Student-t interval of a mean over n seeds: t(½ + c/2, n−1)·sd/√n."""
    std = np.asarray(std, dtype=np.float64)
    if n < 2:
        return np.full_like(std, np.nan)
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def _seeds_and_ci(fig: go.Figure, row: int, col: int, exact: np.ndarray, mean: np.ndarray, low: np.ndarray,
                  high: np.ndarray, *, scale: float, what: str, fmt: Callable[[float], str], labels: list[str],
                  seeds: list[str], symbols: list[str], ci_text: str, skip: np.ndarray) -> None:
    """One forest-plot panel, a table row per line: every seed as a dot (a trace per seed, the
    same colour in every panel) above the line's centre, the mean with its interval [low, high]
    as an error bar below it. ``exact`` (rows x seeds), ``mean``, ``low``, ``high`` are in stored
    units and drawn times ``scale``; hovers give the stored values. Rows in ``skip`` are left
    out (gaps without a divergence marker)."""
    n_rows, n_seeds = exact.shape
    exact = np.where(skip[:, None], np.nan, exact)
    mean, low, high = (np.where(skip, np.nan, a) for a in (mean, low, high))
    offsets = np.linspace(-0.3, -0.08, n_seeds) if n_seeds > 1 else np.array([-0.15])
    colors = [c for c in PALETTE if c != "#000000"]
    first = (row, col) == (1, 1)
    for j, seed in enumerate(seeds):
        fig.add_trace(go.Scatter(
            x=_gaps(scale * exact[:, j]), y=(np.arange(n_rows) + offsets[j]).tolist(), mode="markers",
            name=f"seed {seed}", legendgroup=f"seed {seed}", showlegend=first,
            marker=dict(size=10, color=colors[j % len(colors)], symbol=symbols, opacity=0.9,
                        line=dict(width=1, color="white")),
            customdata=[[labels[i], _exact(exact[i, j]), fmt(exact[i, j])] for i in range(n_rows)],
            hovertemplate=f"<b>%{{customdata[0]}}</b> · seed {seed}<br>{html.escape(what)} = %{{customdata[1]}}"
                          "%{customdata[2]}<extra></extra>",
        ), row=row, col=col)
    fig.add_trace(go.Scatter(
        x=_gaps(scale * mean), y=(np.arange(n_rows) + 0.14).tolist(), mode="markers", name=f"mean, {ci_text}",
        legendgroup="mean", showlegend=first,
        marker=dict(symbol="line-ns", size=16, color="#222", line=dict(width=3, color="#222")),
        error_x=dict(type="data", visible=True, symmetric=False, array=_gaps(scale * (high - mean)),
                     arrayminus=_gaps(scale * (mean - low)), color="#222", thickness=2, width=6),
        customdata=[[labels[i], _exact(mean[i]) + fmt(mean[i]), _exact(low[i]), _exact(high[i])]
                    for i in range(n_rows)],
        hovertemplate=f"<b>%{{customdata[0]}}</b><br>mean {html.escape(what)} = %{{customdata[1]}}"
                      f"<br>{html.escape(ci_text)}: [%{{customdata[2]}}, %{{customdata[3]}}]<extra></extra>",
    ), row=row, col=col)
    shown = scale * exact
    ys = (np.arange(n_rows)[:, None] + offsets[None, :]).ravel().tolist()
    trace = _diverged_trace(ys, shown.ravel(), np.repeat(~skip, n_seeds),
                            _top(_finite_range(shown, scale * low, scale * high)), name=DIVERGED_NAME,
                            color="#d00", what=what, legendgroup="diverged",
                            coords_text=[f"{labels[i]} · seed {s}" for i in range(n_rows) for s in seeds])
    if trace is not None:  # drawn sideways: at the right edge of the panel, on the seed's line
        trace.x, trace.y = trace.y, trace.x
        fig.add_trace(trace, row=row, col=col)


def _compare(r: Any) -> go.Figure:
    """`landscape compare` as a forest plot, one line per table row (optimizer, sweep cell, last
    iterate or averaged model): final test accuracy and loss of every seed with the mean and
    its CI; beside each, the paired differences to the baseline with their CI; and the top
    Hessian eigenvalue when it was computed."""
    optimizer = [_text(v) for v in r.coords["optimizer"]]
    averaged = [_text(v) == "averaged" for v in r.coords["model"]]
    cells = [_text(v) for v in r.coords["sweep"]]
    labels = [html.escape(o + (" (averaged)" if a else "") + (f" [{c}]" if c else ""))
              for o, a, c in zip(optimizer, averaged, cells)]
    seeds = [_text(s) for s in np.asarray(r.coords["seed"]).tolist()]
    n_rows, n = len(labels), len(seeds)
    base = _extra(r, "baseline_row")
    base = np.asarray(base if base is not None else [-1] * n_rows, dtype=int)
    is_ref = base == np.arange(n_rows)
    baseline = _text(r.attrs.get("baseline", ""))
    conf = _scalar(r.attrs.get("confidence")) or 0.95
    pct = f"{100 * conf:g}%"
    stat = lambda metric, name: np.asarray(r.extra[f"stats/{metric}/{name}"], dtype=np.float64)  # noqa: E731
    has_diff = bool(baseline and "stats/test_acc/diff_mean" in r.extra and (base >= 0).any())
    sharp = _extra(r, "sharpness")

    def acc_fmt(v: float) -> str:
        return f" ({100 * v:.6g}%)" if np.isfinite(v) else ""

    def points_fmt(v: float) -> str:
        return f" ({100 * v:+.6g} points)" if np.isfinite(v) else ""

    plain = lambda v: ""  # noqa: E731
    # (panel title, x title, values stored as (rows, seeds), display scale, hover fmt, what, stats name, paired)
    acc = ("Final test accuracy", "accuracy (%)", r.metrics["test"]["accuracy"], 100, acc_fmt,
           "test accuracy", "test_acc", False)
    loss = ("Final test loss", "loss (cross-entropy)", r.metrics["test"]["loss"], 1, plain,
            "test loss", "test_loss", False)
    panels = [acc, loss]
    if has_diff:
        panels = [acc, (f"Δ test accuracy vs {baseline} (paired by seed)", "Δ accuracy (percentage points)",
                        r.extra["paired/test_acc"], 100, points_fmt, f"Δ test accuracy vs {baseline}", "test_acc",
                        True),
                  loss, (f"Δ test loss vs {baseline} (paired by seed)", "Δ loss (cross-entropy)",
                         r.extra["paired/test_loss"], 1, plain, f"Δ test loss vs {baseline}", "test_loss", True)]
    if sharp is not None:
        panels.append(("Sharpness: top Hessian eigenvalue of the train loss", "λ<sub>max</sub> (train-loss Hessian)",
                       sharp, 1, plain, "λ_max", "sharpness", False))
    grid_rows = (len(panels) + 1) // 2
    panel_px, gap_px = max(200, 30 * n_rows + 50), 110  # a panel's plot area; room for axis and panel titles
    plot_px = grid_rows * panel_px + (grid_rows - 1) * gap_px
    specs = [[{}, {}]] * (len(panels) // 2) + ([[{"colspan": 2}, None]] if len(panels) % 2 else [])
    fig = make_subplots(rows=grid_rows, cols=2, specs=specs, subplot_titles=[p[0] for p in panels],
                        shared_yaxes=True, horizontal_spacing=0.06, vertical_spacing=gap_px / plot_px)
    ticktext = [f"<b>{lab}</b> <i>(baseline)</i>" if is_ref[i] else lab for i, lab in enumerate(labels)]
    for k, (_, x_title, stored, scale, fmt, what, metric, paired) in enumerate(panels):
        row, col = k // 2 + 1, k % 2 + 1
        if paired:
            mean, low, high = (stat(metric, f"diff_{s}") for s in ("mean", "ci_low", "ci_high"))
            ci_text = f"{pct} CI of the paired mean (Student t, n−1 = {n - 1})"
        else:
            mean = stat(metric, "mean")
            half = _t_half_width(stat(metric, "std"), n, conf)
            low, high = mean - half, mean + half
            ci_text = f"{pct} CI of the mean (Student t, n−1 = {n - 1})"
        _seeds_and_ci(fig, row, col, np.asarray(stored, dtype=np.float64).reshape(n_rows, n), mean, low, high,
                      scale=scale, what=what, fmt=fmt, labels=labels, seeds=seeds,
                      symbols=["diamond" if a else "circle" for a in averaged], ci_text=ci_text,
                      skip=(is_ref | (base < 0)) if paired else np.zeros(n_rows, bool))
        if paired:
            fig.add_vline(x=0, line=dict(color="#888", width=1.5, dash="dash"), row=row, col=col,
                          annotation=dict(text=f"{html.escape(baseline)} (0)", font=dict(size=12, color="#666")),
                          annotation_position="bottom right")
        for b in np.flatnonzero(is_ref):  # the baseline rows, shaded in every panel
            fig.add_hrect(y0=b - 0.45, y1=b + 0.45, fillcolor="#eeeeee", line_width=0, layer="below",
                          row=row, col=col)
        fig.update_xaxes(title_text=x_title, row=row, col=col)
        fig.update_yaxes(tickvals=list(range(n_rows)), ticktext=ticktext, range=[n_rows - 0.5, -0.5],
                         row=row, col=col)
    fig.update_yaxes(title_text="optimizer [sweep setting]", col=1)
    epochs = _text(r.attrs.get("epochs", "?"))
    sub = (f"final test metrics after {html.escape(epochs)} epochs, {n} seeds ({', '.join(seeds)}); "
           f"dots: seeds (◆ averaged model), bars: mean with its {pct} CI"
           + (f"; Δ: paired within each seed vs {html.escape(baseline)}'s last iterate (shaded)" if has_diff else ""))
    note = "<b>statistics</b> " + html.escape(
        f"std: {_text(r.attrs.get('std', ''))}; CI of a mean: mean ± t({0.5 + conf / 2:g}, n−1)·sd/√n"
        + (f"; Δ: {_text(r.attrs.get('ci', ''))}" if has_diff else ""))
    if sharp is not None and r.attrs.get("sharpness"):
        note += "<br><b>sharpness</b> " + html.escape(_text(r.attrs["sharpness"]))
    _finish(fig, r, "Optimizer comparison over seeds", sub, height=TOP_MARGIN + 76 + plot_px, note=note)
    return fig


ANALYSES: dict[str, Callable[[Any], go.Figure]] = {
    "interpolate": _interpolate,
    "rays": _rays,
    "surface": _surface,
    "segments": _segments,
    "twopoint": _twopoint,
    "trajectory": _trajectory,
    "sharpness": _sharpness,
    "compare": _compare,
}


def figure(result: Any) -> go.Figure:
    """The figure of one result (a :class:`landscape.store.Result`, or a path to load)."""
    if isinstance(result, (str, os.PathLike)):
        from landscape.store import load_result
        result = load_result(result)
    attrs = getattr(result, "attrs", {}) or {}
    analysis = _text(attrs.get("analysis", ""))
    draw = ANALYSES.get(analysis)
    where = getattr(result, "path", "result")
    if draw is None:
        raise UserError(f"{where}: cannot draw analysis {analysis!r}; known: {', '.join(ANALYSES)}")
    try:
        return draw(result)
    except (KeyError, IndexError) as exc:
        raise UserError(f"{where}: {analysis} result is missing or has malformed data ({exc})") from None


# ============================================================================ HTML

def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_html(figures: Sequence[go.Figure | str], path: str | os.PathLike, title: str,
               caption_html: str = "") -> Path:
    """One self-contained page: plotly.js embedded once, then every figure; written atomically.

    Items of ``figures`` that are strings are inserted as HTML fragments (headings, tables)
    in order. ``caption_html`` goes under the page title. Returns the path written.
    """
    path = Path(path)
    parts: list[str] = []
    embedded = False
    n = 0
    for item in figures:
        if isinstance(item, str):
            parts.append(item)
            continue
        if not isinstance(item, go.Figure):
            raise TypeError(f"write_html takes plotly Figures or HTML strings, not {type(item).__name__}")
        n += 1
        div = pio.to_html(item, full_html=False, include_plotlyjs=not embedded, config=CONFIG,
                          div_id=f"figure-{n}", default_width="100%")
        embedded = True
        parts.append(f'<div class="figure">{div}</div>')
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        + (f'<div class="caption">{caption_html}</div>\n' if caption_html else "")
        + "\n".join(parts)
        + f"\n<footer>made by landscape {_version()} · plotly.js embedded; this page works offline</footer>"
        + "\n</main>\n</body>\n</html>\n"
    )
    _atomic_write_text(path, page)
    return path


def _version() -> str:
    try:
        import landscape
        return landscape.__version__
    except Exception:  # pragma: no cover
        return "?"


def plot_result(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw one result file into a self-contained HTML page (default: RESULT.html beside it)."""
    from landscape.store import load_result

    path = Path(path)
    result = load_result(path)
    fig = figure(result)
    out = Path(out) if out is not None else path.with_suffix(".html")
    title = f"{_text(result.attrs.get('analysis'))}: {path.name}"
    return write_html([fig], out, title)


# ============================================================================ run directories

def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise UserError(f"{path}:{n}: not a JSON line") from None
    return rows


def _optimizer_dirs(run_dir: Path) -> list[Path]:
    """RUN/<optimizer> folders with a metrics.jsonl, in the run's optimizer order."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder)")
    found = {p.parent.name: p.parent for p in run_dir.glob("*/metrics.jsonl")}
    order: list[str] = []
    config = run_dir / "config.json"
    if config.exists():
        try:
            cfg = json.loads(config.read_text())
            order = list((cfg.get("config") or cfg).get("optimizers") or [])
        except (ValueError, AttributeError):
            order = []
    names = [o for o in order if o in found] + sorted(o for o in found if o not in order)
    return [found[n] for n in names]


def metrics_figure(run_dir: str | os.PathLike) -> go.Figure:
    """Per-epoch train/test loss and accuracy of every optimizer of a run, and the LR schedule.

    Solid lines: the iterate; dashed: the averaged model (swa, asgd, phase, --average).
    """
    run_dir = Path(run_dir)
    dirs = _optimizer_dirs(run_dir)
    if not dirs:
        raise UserError(f"{run_dir}: no RUN/<optimizer>/metrics.jsonl found; is this a run directory?")
    fig = make_subplots(rows=3, cols=2, row_heights=[0.4, 0.4, 0.2], vertical_spacing=0.09,
                        horizontal_spacing=0.08, shared_xaxes=True,
                        specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
                        subplot_titles=("Train loss", "Test loss", "Train accuracy (%)", "Test accuracy (%)",
                                        "Learning rate"))
    for i, d in enumerate(dirs):
        rows = _read_metrics(d / "metrics.jsonl")
        if not rows:
            continue
        name, color = d.name, PALETTE[i % len(PALETTE)]
        epoch = [row.get("epoch") for row in rows]

        def col(key: str, scale: float = 1.0) -> list | None:
            vals = [row.get(key) for row in rows]
            if all(v is None for v in vals):
                return None
            return _gaps([np.nan if v is None else float(v) * scale for v in vals])

        for key, r_, c_, scale, unit in (("train_loss", 1, 1, 1, "loss"), ("test_loss", 1, 2, 1, "loss"),
                                         ("train_acc", 2, 1, 100, "accuracy %"),
                                         ("test_acc", 2, 2, 100, "accuracy %")):
            for averaged in (False, True):
                k = f"averaged_{key}" if averaged else key
                ys = col(k, scale)
                if ys is None:
                    continue
                label = f"{name} (averaged)" if averaged else name
                fig.add_trace(go.Scatter(
                    x=epoch, y=ys, mode="lines+markers" if len(rows) <= 40 else "lines", name=label,
                    legendgroup=label, marker=dict(size=5),
                    showlegend=(r_, c_) == (1, 1),
                    line=dict(color=color, width=2.6, dash="dash" if averaged else "solid"),
                    customdata=[_exact(v) if v is not None else "n/a" for v in (row.get(k) for row in rows)],
                    hovertemplate=f"<b>{html.escape(label)}</b> epoch %{{x}}<br>{k.replace('_', ' ')} = "
                                  "%{customdata}<extra></extra>",
                ), row=r_, col=c_)
        lr = col("lr")
        if lr is not None:
            fig.add_trace(go.Scatter(
                x=epoch, y=lr, mode="lines", name=f"{name} lr", legendgroup=name, showlegend=False,
                line=dict(color=color, width=2.2, shape="hv"),
                customdata=[_exact(row.get("lr")) if row.get("lr") is not None else "n/a" for row in rows],
                hovertemplate=f"<b>{html.escape(name)}</b> epoch %{{x}}<br>lr (last step) = %{{customdata}}"
                              "<extra></extra>",
            ), row=3, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=2, col=1)
    fig.update_yaxes(title_text="lr", type="log", dtick=1, row=3, col=1)
    fig.update_xaxes(title_text="epoch", row=3, col=1)
    fig.update_layout(updatemenus=[_scale_buttons(["yaxis", "yaxis2"])])
    _finish(fig, None, f"Training curves: {run_dir.name}",
            "per epoch, evaluated on the full splits; solid: iterate, dashed: averaged model",
            height=900, caption_shift=0, legend_top=False, right_margin=30)
    _place_buttons(fig)
    return fig


def _summary_table(run_dir: Path) -> str:
    head = ("<tr><th>optimizer</th><th>epochs</th><th>final test acc.</th><th>averaged test acc.</th>"
            "<th>best test acc. (epoch)</th><th>final train loss</th></tr>")
    body = []
    for d in _optimizer_dirs(run_dir):
        rows = _read_metrics(d / "metrics.jsonl")
        if not rows:
            body.append(f"<tr><td>{html.escape(d.name)}</td><td colspan=5>no epochs finished</td></tr>")
            continue
        last = rows[-1]

        def pct(v: Any) -> str:
            return "—" if v is None or not np.isfinite(float(v)) else f"{100 * float(v):.2f}%"

        accs = [(float(r["test_acc"]), r.get("epoch")) for r in rows
                if r.get("test_acc") is not None and np.isfinite(float(r["test_acc"]))]
        best = max(accs, key=lambda a: a[0]) if accs else None
        loss = last.get("train_loss")
        body.append(
            f"<tr><td>{html.escape(d.name)}</td><td>{html.escape(_text(last.get('epoch', len(rows))))}</td>"
            f"<td>{pct(last.get('test_acc'))}</td><td>{pct(last.get('averaged_test_acc'))}</td>"
            f"<td>{pct(best[0]) + f' ({best[1]})' if best else '—'}</td>"
            f"<td>{'—' if loss is None else f'{float(loss):.4g}'}</td></tr>")
    return f'<table class="summary">{head}{"".join(body)}</table>'


def _compare_section(path: Path) -> str:
    """The table of a `landscape compare` result (compare.h5) as HTML: mean ± std over seeds
    and the paired difference to the baseline with its 95% CI, as the command prints it."""
    from landscape.store import load_result

    try:
        r = load_result(path)
        names = [_text(v) for v in r.coords["optimizer"]]
        cells = [_text(v) for v in r.coords["sweep"]]
        kinds = [_text(v) for v in r.coords["model"]]
        base = np.asarray(r.extra["baseline_row"]).tolist()
        stat = lambda metric, name: np.asarray(r.extra[f"stats/{metric}/{name}"], dtype=float)  # noqa: E731
        acc = {k: stat("test_acc", k) for k in ("mean", "std")}
        loss = {k: stat("test_loss", k) for k in ("mean", "std")}
    except (KeyError, UserError) as exc:
        return f'<p class="error">could not read {html.escape(str(path))}: {html.escape(str(exc))}</p>'
    baseline = _text(r.attrs.get("baseline", ""))
    has_diff = bool(baseline) and "stats/test_acc/diff_mean" in r.extra
    sharp = "stats/sharpness/mean" in r.extra

    def pm(m: float, s: float, scale: float, digits: int) -> str:
        if not np.isfinite(m):
            return "—"
        return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}" if np.isfinite(s) else f"{scale * m:.{digits}f}"

    def ci(metric: str, i: int, scale: float, digits: int) -> str:
        if base[i] == i:
            return "reference"
        m, lo, hi = (float(r.extra[f"stats/{metric}/diff_{k}"][i]) for k in ("mean", "ci_low", "ci_high"))
        if base[i] < 0 or not np.isfinite(m):
            return "—"
        return (f"{scale * m:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
                if np.isfinite(lo) else f"{scale * m:+.{digits}f}")

    sweep = any(cells)
    head = ["optimizer"] + (["sweep"] if sweep else []) + ["model", "test acc. (%)"]
    head += [f"Δ acc. vs {baseline} (points) [95% CI]"] if has_diff else []
    head += ["test loss"] + ([f"Δ loss vs {baseline} [95% CI]"] if has_diff else [])
    head += ["top Hessian eig."] if sharp else []
    body = []
    for i, name in enumerate(names):
        cols = [name] + ([cells[i] or "—"] if sweep else []) + [kinds[i], pm(acc["mean"][i], acc["std"][i], 100, 2)]
        cols += [ci("test_acc", i, 100, 2)] if has_diff else []
        cols += [pm(loss["mean"][i], loss["std"][i], 1, 4)] + ([ci("test_loss", i, 1, 4)] if has_diff else [])
        if sharp:
            cols.append(pm(float(r.extra["stats/sharpness/mean"][i]), float(r.extra["stats/sharpness/std"][i]), 1, 3))
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cols) + "</tr>")
    seeds = _as_list(r.attrs.get("seeds", []))
    note = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {_text(r.attrs.get('epochs', '?'))} epochs; "
            f"{_text(r.attrs.get('std', ''))}" + (f"; Δ: {_text(r.attrs.get('ci', ''))}" if has_diff else "")
            + f". Command: {_text(r.attrs.get('command', ''))}")
    return (f'<table class="summary"><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>'
            f'{"".join(body)}</table><p class="caption">{html.escape(note)}</p>')


def _run_caption(run_dir: Path) -> str:
    config = run_dir / "config.json"
    if not config.exists():
        return f"run directory <code>{html.escape(str(run_dir))}</code>"
    try:
        cfg = json.loads(config.read_text())
    except ValueError:
        return f"run directory <code>{html.escape(str(run_dir))}</code> (config.json unreadable)"
    c = cfg.get("config", cfg) if isinstance(cfg, dict) else {}
    parts = [f"run <code>{html.escape(str(run_dir))}</code>"]
    for key in ("dataset", "model", "optimizers", "epochs", "batch_size", "phases", "schedule", "seed"):
        if key in c and c[key] not in (None, "", []):
            v = c[key]
            v = ", ".join(map(str, v)) if isinstance(v, list) else v
            parts.append(f"<b>{key.replace('_', ' ')}</b> {html.escape(_text(v))}")
    if cfg.get("device"):
        parts.append(f"<b>device</b> {html.escape(_text(cfg['device']))}")
    return " · ".join(parts)


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """One page for a run: training curves, a summary table, and every result file inside it."""
    run_dir = Path(run_dir)
    compare_h5 = run_dir / "compare.h5"  # `landscape compare` output: its table first
    items: list[go.Figure | str] = []
    if compare_h5.is_file():
        items += ["<h2>Comparison</h2>", _compare_section(compare_h5)]
        try:
            from landscape.store import load_result
            items.append(figure(load_result(compare_h5)))
        except UserError as exc:
            items.append(f'<p class="error">could not draw compare.h5: {html.escape(str(exc))}</p>')
    if not compare_h5.is_file() or _optimizer_dirs(run_dir):
        items += ["<h2>Training</h2>", _summary_table(run_dir), metrics_figure(run_dir)]
    results = sorted(p for p in run_dir.rglob("*.h5") if p.is_file() and p != compare_h5)
    if results:
        from landscape.store import load_result
    for p in results:
        rel = p.relative_to(run_dir)
        items.append(f"<h2>{html.escape(str(rel))}</h2>")
        try:
            items.append(figure(load_result(p)))
        except UserError as exc:
            items.append(f'<p class="error">could not draw {html.escape(str(rel))}: {html.escape(str(exc))}</p>')
    out = Path(out) if out is not None else run_dir / "report.html"
    return write_html(items, out, f"landscape report: {run_dir.name}", _run_caption(run_dir))


# ============================================================================ PNG

def save_png(fig: go.Figure, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Static PNG through kaleido; a clear UserError when kaleido or a Chrome is missing."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise UserError("PNG export needs the 'kaleido' package (pip install kaleido) and a Chrome/Chromium; "
                        "kaleido is not installed. The HTML output needs neither.") from None
    browsers = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    if not (os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in browsers)):
        raise UserError("PNG export through kaleido needs Chrome or Chromium, and none was found "
                        "(install chromium, or set BROWSER_PATH to a Chrome binary)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.write_image(tmp, format="png", scale=scale)
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"PNG export failed: {' '.join(str(exc).split())[:300]}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path

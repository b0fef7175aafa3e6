"""What every figure shares: the palette, fonts and sizes, value formatting for hovers,
the caption, and the layout helpers (title, legend, linear/log buttons, diverged markers)."""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

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
h2 .file { font-size: 13px; font-weight: normal; color: #888; margin-left: 8px; }
.takeaway { font-size: 16px; line-height: 1.45; margin: 6px 0 8px; }
code { font-size: 13px; background: #f0f0f0; padding: 1px 4px; border-radius: 3px; }
footer { color: #888; font-size: 12px; margin-top: 32px; }
"""
RAY_UNITS = {"filter": "filter-normalized units", "layer": "layer-normalized units",
             "none": "Euclidean parameter distance"}


# ============================================================================ escaping

# Text that comes from files (result attributes and datasets, metrics.jsonl, config.json,
# file and folder names) is data, never markup. It reaches two interpreters: the HTML page,
# and plotly.js, which renders a subset of HTML (<a href>, <span style>, <b>, ...) in titles,
# annotations, legends, tick labels and hover text, and substitutes %{...} in hover
# templates. One function makes such text inert for both: HTML's special characters and
# the braces become numeric character references, which browsers and plotly.js both show
# as the characters themselves. Every file-derived string goes through `esc`, once:
# `figure` escapes the whole result on entry (`html_safe`), the page code escapes what it
# reads from run directories itself.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;",
                          "{": "&#123;", "}": "&#125;"})


def esc(value: Any) -> str:
    """``value`` as text that HTML and plotly.js display literally and never interpret."""
    return _text(value).translate(_ESCAPES)


def _esc_tree(value: Any) -> Any:
    """Every string in ``value`` (dict keys too, lists, string arrays) through :func:`esc`."""
    if isinstance(value, (str, bytes)):
        return esc(value)
    if isinstance(value, Mapping):
        return {esc(k) if isinstance(k, (str, bytes)) else k: _esc_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_esc_tree(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return np.array([_esc_tree(v) for v in value.ravel().tolist()], dtype=object).reshape(value.shape)
        return value
    if value is None or isinstance(value, (bool, int, float, complex, np.number, np.bool_)):
        return value
    return esc(str(value))  # anything else (an HDF5 reference...) is shown as escaped text


def html_safe(result: Any) -> Any:
    """A copy of a result whose strings are all escaped (:func:`esc`), for drawing.

    Idempotent: figure code calls it on entry and may call it again. The file path stays a
    path (escape it with :func:`esc` where it is shown)."""
    if getattr(result, "html_safe", False):
        return result
    safe = copy.copy(result)
    for name in ("extra", "extra_attrs"):
        if isinstance(getattr(result, name, None), Mapping):
            setattr(safe, name, {key: _esc_tree(v) for key, v in getattr(result, name).items()})
    if isinstance(getattr(result, "attrs", None), Mapping):
        safe.attrs = _esc_tree(result.attrs)  # attribute names too: some are shown
    if isinstance(getattr(result, "coords", None), Mapping):
        safe.coords = {key: _esc_tree(v) for key, v in result.coords.items()}  # names are looked up, not shown
    if isinstance(getattr(result, "metrics", None), Mapping):
        safe.metrics = {esc(split): values for split, values in result.metrics.items()}  # split names are shown
    if getattr(result, "dims", None) is not None:
        safe.dims = [esc(d) for d in result.dims]
    try:
        safe.html_safe = True
    except AttributeError:  # a frozen or slotted stand-in: escaped anyway
        pass
    return safe


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
        return [_text(value)]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_text(v) if isinstance(v, bytes) else v for v in value]
    return [value]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
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
    result = html_safe(result)  # every string below from the file is escaped, once
    attrs = dict(getattr(result, "attrs", {}) or {})
    lines = []
    command = attrs.get("command")
    if command:
        lines.append(f"<b>command</b> {_text(command)}")
    parts = [f"<b>data</b> {_dataset_text(attrs.get('dataset'))}", f"<b>subset</b> {_subset_text(attrs)}"]
    if attrs.get("bn_mode"):
        parts.append(f"<b>BN</b> {_text(attrs['bn_mode'])}")
    if attrs.get("normalization"):
        parts.append(f"<b>directions</b> {_text(attrs['normalization'])}"
                     + (f", ignore {_text(attrs['ignore'])}" if attrs.get("ignore") else ""))
    if attrs.get("seed") is not None:
        parts.append(f"<b>seed</b> {_text(attrs['seed'])}")
    if attrs.get("precision"):
        parts.append(f"<b>precision</b> {_text(attrs['precision'])}")
    lines.append(" · ".join(parts))
    ckpts = [checkpoint_name(p) for p in _as_list(attrs.get("checkpoints"))]
    if ckpts:
        shown = ckpts if len(ckpts) <= 6 else ckpts[:3] + ["…"] + ckpts[-2:]
        lines.append(f"<b>checkpoints</b> ({len(ckpts)}) " + ", ".join(shown))
    prov = []
    path = getattr(result, "path", None)
    if path is not None:
        prov.append(f"file {esc(Path(path).name)}")
    for key, label in (("landscape_version", "landscape"), ("torch_version", "torch"), ("created", "created")):
        if attrs.get(key):
            prov.append(f"{label} {_text(attrs[key])}")
    done = getattr(result, "done", None)
    if done is not None and np.size(done) and not np.asarray(done).all():
        missing = int(np.size(done) - np.count_nonzero(done))
        prov.append(f"<b>unfinished: {missing} of {np.size(done)} points not computed yet</b>")
    if prov:
        lines.append(" · ".join(prov))
    return "<br>".join(_wrap(line) for line in lines)


# An HTML tag or a character reference: never split by wrapping, one character wide.
_ATOM = re.compile(r"<[^<>]*>|&#?\w+;")


def _wrap(line: str, width: int = CAPTION_WIDTH) -> str:
    """Wrap one caption line (HTML) at spaces, or inside a long word; tags and character
    references are never split."""
    if len(_ATOM.sub("x", line)) <= width:
        return line
    rows: list[str] = []
    row, row_len = "", 0
    for word in re.split(r"( )", line):
        size = len(_ATOM.sub("x", word))
        if row_len + size > width and row.strip():
            rows.append(row.rstrip())
            row, row_len = "", 0
            if word == " ":
                continue
        while size > width:  # a long word (a path): cut it between atoms
            pieces = [m.group(0) for m in re.finditer(r"<[^<>]*>|&#?\w+;|.", word, flags=re.S)]
            rows.append("".join(pieces[:width]))
            word = "".join(pieces[width:])
            size = len(_ATOM.sub("x", word))
        row, row_len = row + word, row_len + size
    if row.strip():
        rows.append(row.rstrip())
    return "<br>&nbsp;&nbsp;".join(rows)


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
        hovertemplate=f"<b>{what} = %{{customdata[0]}}</b> (diverged; drawn as a gap)"
                      "<br>%{customdata[1]}<extra></extra>",
        legendgroup=legendgroup, showlegend=showlegend, cliponaxis=False,
    )


def _top(rng: tuple[float, float] | None) -> float:
    if rng is None:
        return 1.0
    lo, hi = rng
    return hi + 0.04 * (hi - lo if hi > lo else abs(hi) or 1.0)


def _place_buttons(fig: go.Figure) -> None:
    """Put the updatemenus on the legend's row, right-aligned, just under the title.

    Update menus only take paper coordinates, so the row's pixel offset is converted."""
    h = fig.layout.height or HEIGHT
    m = fig.layout.margin
    plot_h = max(h - (m.t or 0) - (m.b or 0), 1)
    for menu in fig.layout.updatemenus or ():
        menu.y = 1 + ((m.t or 0) - LEGEND_TOP + 4) / plot_h
        menu.yanchor = "top"

"""The figure of a `landscape compare` result: a forest plot over seeds."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.plots.style import (
    html_safe,
    DIVERGED_NAME, PALETTE, TOP_MARGIN, _diverged_trace, _exact, _extra, _finish, _finite_range, _gaps, _scalar,
    _text, _top,
)


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
            hovertemplate=f"<b>%{{customdata[0]}}</b> · seed {seed}<br>{(what)} = %{{customdata[1]}}"
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
        hovertemplate=f"<b>%{{customdata[0]}}</b><br>mean {(what)} = %{{customdata[1]}}"
                      f"<br>{(ci_text)}: [%{{customdata[2]}}, %{{customdata[3]}}]<extra></extra>",
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
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
    optimizer = [_text(v) for v in r.coords["optimizer"]]
    averaged = [_text(v) == "averaged" for v in r.coords["model"]]
    cells = [_text(v) for v in r.coords["sweep"]]
    labels = [(o + (" (averaged)" if a else "") + (f" [{c}]" if c else ""))
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
                          annotation=dict(text=f"{(baseline)} (0)", font=dict(size=12, color="#666")),
                          annotation_position="bottom right")
        for b in np.flatnonzero(is_ref):  # the baseline rows, shaded in every panel
            fig.add_hrect(y0=b - 0.45, y1=b + 0.45, fillcolor="#eeeeee", line_width=0, layer="below",
                          row=row, col=col)
        fig.update_xaxes(title_text=x_title, row=row, col=col)
        fig.update_yaxes(tickvals=list(range(n_rows)), ticktext=ticktext, range=[n_rows - 0.5, -0.5],
                         row=row, col=col)
    fig.update_yaxes(title_text="optimizer [sweep setting]", col=1)
    epochs = _text(r.attrs.get("epochs", "?"))
    sub = (f"final test metrics after {(epochs)} epochs, {n} seeds ({', '.join(seeds)}); "
           f"dots: seeds (◆ averaged model), bars: mean with its {pct} CI"
           + (f"; Δ: paired within each seed vs {(baseline)}'s last iterate (shaded)" if has_diff else ""))
    note = "<b>statistics</b> " + (
        f"std: {_text(r.attrs.get('std', ''))}; CI of a mean: mean ± t({0.5 + conf / 2:g}, n−1)·sd/√n"
        + (f"; Δ: {_text(r.attrs.get('ci', ''))}" if has_diff else ""))
    if sharp is not None and r.attrs.get("sharpness"):
        note += "<br><b>sharpness</b> " + (_text(r.attrs["sharpness"]))
    _finish(fig, r, "Optimizer comparison over seeds", sub, height=TOP_MARGIN + 76 + plot_px, note=note)
    return fig

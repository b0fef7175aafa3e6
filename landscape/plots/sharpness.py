"""Figures of `landscape sharpness` results: the Hessian spectrum, or sharpness along a line."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.plots.style import (
    html_safe,
    DIVERGED, DIVERGED_NAME, HEIGHT, PALETTE, _as_list, _coord, _exact, _extra, _finish, _finite_range, _gaps,
    _rgba, _scalar, _splits, _strings, _text, _top, checkpoint_name,
)


# ============================================================================ sharpness

def _sharpness_along(r: Any) -> go.Figure:
    """``sharpness --along line.h5``: lambda_max (and trace / SAM sharpness) at every alpha."""
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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
            hovertemplate=f"<b>{(name)} = %{{customdata[1]}}</b><br>%{{customdata[0]}}<extra></extra>",
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
                              annotation=dict(text=f"<b>{letter}</b> {(label)}", font=dict(size=12)),
                              annotation_position="top left" if a == 0 else "top right")
        fig.update_xaxes(title_text="α (0 = A, 1 = B)", row=1, col=col)
    fig.update_yaxes(title_text="eigenvalue of the loss Hessian", row=1, col=1)
    fig.update_yaxes(title_text=right_title, row=1, col=2)
    sub = f"(1 − α)·A + α·B from A = {(a_name)} to B = {(b_name)}; {(split)} loss"
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


def _sam_ascent(fig: go.Figure, r: Any, curve: np.ndarray) -> None:
    """L(w + e_t) − L(w) after t projected ascent steps on the ρ-ball: the SAM sharpness is its end."""
    rho = (getattr(r, "extra_attrs", {}) or {}).get("sam/ascent", {}).get("rho")
    steps = np.arange(len(curve))
    fig.add_trace(go.Scatter(
        x=steps.tolist(), y=_gaps(curve), mode="lines+markers", name="SAM ascent",
        line=dict(color=PALETTE[2], width=2.5), marker=dict(size=8, color=PALETTE[2]),
        customdata=[[str(t), _exact(v)] for t, v in zip(steps, curve)],
        hovertemplate="after %{customdata[0]} ascent step(s)<br><b>L(w+e) − L(w) = %{customdata[1]}</b>"
                      "<extra></extra>",
    ), row=1, col=2)
    fig.update_xaxes(title_text="ascent steps (0: the first-order step)", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="L(w+e) − L(w)" + (f", ‖e‖ ≤ ρ = {_scalar(rho):g}" if _scalar(rho) else ""),
                     row=1, col=2)


def _sharpness(r: Any) -> go.Figure:
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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
    has_density = grid is not None and dens is not None and np.size(grid) == np.size(dens)
    sam_curve = _extra(r, "sam/curve")
    # The right panel: the spectral density, or else the SAM ascent (an empty panel says nothing).
    right = "Spectral density" if has_density else "SAM ascent" if sam_curve is not None else ""
    if layers:
        fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]], row_heights=[0.6, 0.4],
                            vertical_spacing=0.16, horizontal_spacing=0.1,
                            subplot_titles=("Top Hessian eigenvalues", right, "By module"))
        _sharpness_layers(fig, r, 2)
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Top Hessian eigenvalues", right),
                            horizontal_spacing=0.1)
    if not has_density and sam_curve is not None:
        _sam_ascent(fig, r, np.asarray(sam_curve, dtype=np.float64).ravel())
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
    if has_density:
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
    if limit is not None and not off_scale and has_density:
        fig.add_vline(x=limit, line=dict(color="#D55E00", width=2, dash="dash"), row=1, col=2,
                      annotation=dict(text=f"2/lr = {limit:.4g}", font=dict(size=13, color="#D55E00")),
                      annotation_position="top left")
    fig.update_xaxes(title_text="rank", dtick=1, range=[0.5, max(eig.size, 1) + 0.5], row=1, col=1)
    fig.update_yaxes(title_text="eigenvalue of the loss Hessian", row=1, col=1)
    if has_density:
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

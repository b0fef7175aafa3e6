"""Figures on planes in weight space: the loss surface and the optimization trajectory (PCA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.errors import UserError
from landscape.plots.style import (
    html_safe,
    DIVERGED, DIVERGED_NAME, HEIGHT, RAY_UNITS, TOP_MARGIN, _as_list, _axis_name, _coord, _done_mask, _exact,
    _extra, _finish, _finite_range, _gaps, _nice_log_ticks, _place_buttons, _splits, _strings, _text,
    checkpoint_name,
)


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
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
    xs = np.asarray(r.coords["x"], dtype=np.float64)
    ys = np.asarray(r.coords["y"], dtype=np.float64)
    nx, ny = len(xs), len(ys)
    splits = [s for s in _splits(r) if "loss" in r.metrics[s]]
    norm = _text(r.attrs.get("normalization")) if r.attrs.get("normalization") is not None else ""
    units = _text(r.attrs.get("units")) if r.attrs.get("units") else RAY_UNITS.get(norm, norm or "direction units")
    short_units = ("parameter distance" if norm == "gram-schmidt" else RAY_UNITS.get(norm, "direction units"))
    done = _done_mask(r, (ny, nx))
    # Panels: each split's loss (log colour scale), and on a plane through models the test
    # error as well (linear, in %), as in the SWA paper's Fig. 1.
    panels: list[dict[str, Any]] = []
    for split in splits:
        loss = _grid(r, r.metrics[split]["loss"], nx, ny)
        acc = _grid(r, r.metrics[split]["accuracy"], nx, ny) if "accuracy" in r.metrics[split] else None
        panels.append(dict(split=split, name=f"{split} loss", values=loss, z=_log10(loss), log=True, acc=acc))
    test = next((p for p in panels if p["split"] == "test" and p["acc"] is not None), None)
    if norm == "gram-schmidt" and test is not None:
        error = 100.0 * (1.0 - test["acc"])
        panels.append(dict(split="test", name="test error (%)", values=error, z=error, log=False, acc=test["acc"]))
    ncols = max(len(panels), 1)
    spacing = 0.16 if ncols < 3 else 0.1
    fig = make_subplots(rows=1, cols=ncols, subplot_titles=[p["name"] for p in panels] or [""],
                        horizontal_spacing=spacing)
    # One colour scale per panel: train and test losses often differ by an order of
    # magnitude, and a shared scale would flatten the contrast of both.
    for i, p in enumerate(panels):
        p["range"] = _finite_range(p["z"]) or (0.0, 1.0)
        p["axis"] = "coloraxis" if i == 0 else f"coloraxis{i + 1}"
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

    for col, panel in enumerate(panels, start=1):
        split, loss, acc, z = panel["split"], panel["values"], panel["acc"], panel["z"]
        acc_txt = _strings(acc) if acc is not None else np.full((ny, nx), "n/a", dtype=object)
        cd = np.stack([x_txt, y_txt, _strings(loss), acc_txt], -1).tolist()
        hover = (f"<b>{panel['name']} = %{{customdata[2]}}</b><br>{split} accuracy %{{customdata[3]}}"
                 "<br>x = %{customdata[0]}, y = %{customdata[1]}<extra></extra>")
        contour = go.Contour(
            x=xs.tolist(), y=ys.tolist(), z=_gaps(z), coloraxis=panel["axis"], customdata=cd,
            hovertemplate=hover, name=panel["name"], showlegend=False, connectgaps=False,
            contours=dict(coloring="heatmap", showlines=True), ncontours=24,
            line=dict(width=0.6, color="rgba(255,255,255,0.55)"),
        )
        fig.add_trace(contour, row=1, col=col)
        traces_2d.append(len(fig.data) - 1)
        scene = "scene" if col == 1 else f"scene{col}"
        fig.add_trace(go.Surface(
            x=xs.tolist(), y=ys.tolist(), z=_gaps(z), coloraxis=panel["axis"], customdata=cd,
            hovertemplate=hover, name=panel["name"], showlegend=False, visible=False, scene=scene,
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
                hovertemplate=f"<b>{panel['name']} = %{{customdata[0]}}</b> (diverged; drawn as a gap)"
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
            zpath = [_bilinear(xs, ys, z, a, b) for a, b in path_xy]
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
            zm = [_bilinear(xs, ys, z, a, b) for a, b in model_xy]
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
        panel_px = 1200 * (1 - spacing * (ncols - 1)) / ncols  # the report's width
        plot_px = height - TOP_MARGIN - 76
        aspect = (ys.max() - ys.min()) / max(xs.max() - xs.min(), 1e-12)
        height -= int(max(0.0, plot_px - max(260.0, panel_px * aspect)))
    for col, panel in enumerate(panels, start=1):
        lo, hi = panel["range"]
        ticks = dict(zip(("tickvals", "ticktext"), _nice_log_ticks(lo, hi))) if panel["log"] else {}
        right = fig.layout[_axis_name("x", 1, col, ncols)].domain[1]
        title = f"{panel['name']}<br>(log scale)" if panel["log"] else panel["name"].replace(" (", "<br>(")
        fig.layout[panel["axis"]] = dict(colorscale="Viridis", cmin=lo, cmax=hi, colorbar=dict(
            title=dict(text=title, side="top"), len=0.85, thickness=14, x=right + 0.012, xanchor="left", **ticks))

    # 3-D scenes: parked in a corner (they would swallow the contour's hover) until switched to.
    parked = dict(x=[0, 0.0001], y=[0, 0.0001])
    scene_ids = ["scene" if c == 1 else f"scene{c}" for c in range(1, ncols + 1)]
    domains = {}
    for col, sid in enumerate(scene_ids, start=1):
        panel = panels[col - 1] if panels else dict(log=False, name="")
        ticks = dict(zip(("tickvals", "ticktext"), _nice_log_ticks(*panel["range"]))) if panel["log"] else {}
        z_axis = dict(title="loss" if panel["log"] else panel["name"], tickfont=dict(size=11), **ticks)
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
    colour = "loss on a log scale" + ("; error linear, in %" if len(panels) > len(splits) else "")
    _finish(fig, r, "Loss surface", f"{plane}; grid {nx} × {ny}; colour: {colour}, per panel",
            height=height, right_margin=70)
    _place_buttons(fig)
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


def _away_from_path(coords: np.ndarray, t: int) -> str:
    """Where an end point's label goes so that it sits on neither its marker nor the path:
    beyond the end, in the direction the path arrives from the neighbouring point."""
    near = t + 1 if t == 0 else t - 1
    if not (0 <= near < len(coords)) or not np.isfinite(coords[[t, near]]).all():
        return "top center"
    span = np.ptp(coords[np.isfinite(coords).all(axis=1)], axis=0)
    dx, dy = (coords[t] - coords[near]) / np.where(span > 0, span, 1.0)
    if abs(dx) >= abs(dy):
        return "middle right" if dx > 0 else "middle left"
    return "top center" if dy > 0 else "bottom center"


def _trajectory(r: Any) -> go.Figure:
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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

    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.12,
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
            colorbar=dict(title=dict(text=f"{zsplit} loss", side="top"), tickvals=tv, ticktext=tt, x=1.02,
                          xanchor="left", y=0.0, yanchor="bottom", len=0.44, thickness=12)))
    # Both colour bars stacked right of the figure: between the panels a bar would sit on the
    # time-delay panel's y-title in a narrow window.
    epoch_axis = dict(colorscale="Viridis", cmin=float(epochs.min()), cmax=float(epochs.max()),
                      colorbar=dict(title=dict(text="epoch", side="top"), x=1.02, xanchor="left",
                                    y=1.0, yanchor="top", len=0.44 if has_surface else 0.8, thickness=14))
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
            textposition=[_away_from_path(coords, t) for t in ends], textfont=dict(size=13),
            name="start / end", showlegend=False, cliponaxis=False,
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
          (f"; weights: {(_text(layer))}" if layer else "") + \
          (f"; LR phases start at epoch {', '.join(ep_txt[t] for t in boundaries)}" if boundaries else "") + \
          ("; background: loss on the PCA plane" if has_surface else "")
    _finish(fig, r, "Optimization trajectory", sub, right_margin=90)
    return fig

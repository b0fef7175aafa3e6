"""Figures of losses along lines in weight space: interpolate, rays, segments, twopoint."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.plots.style import (
    html_safe,
    DIVERGED_NAME, HEIGHT, PALETTE, RAY_UNITS, _as_list, _axis_name, _coord, _diverged_trace, _done_mask,
    _error_pct, _exact, _extra, _finish, _finite_range, _gaps, _nan_stats, _place_buttons, _rgba, _scalar,
    _scale_buttons, _split_color, _splits, _strings, _text, _top, checkpoint_name,
)


# ============================================================================ interpolate

def _interpolate(r: Any) -> go.Figure:
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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
                    hovertemplate=f"<b>{letter} = {(label_name)}</b> (α = {a:g})"
                                  "<br>%{customdata}<extra></extra>",
                ), row=1, col=col)
            fig.add_vline(x=a, line=dict(color="#999", width=1.2, dash="dot"), row=1, col=col,
                          annotation=dict(text=f"<b>{letter}</b> {(label_name)}", font=dict(size=12),
                                          textangle=0, bgcolor="rgba(255,255,255,0.8)"),
                          annotation_position="top left" if end == 0 else "top right")
        fig.update_xaxes(title_text=f"α (0 = A, 1 = B){dist_text}" if col == 1 else "α (0 = A, 1 = B)",
                         row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="error (%)", row=1, col=2)
    fig.update_layout(updatemenus=[_scale_buttons(["yaxis", "yaxis2"], y=1.0)])
    _finish(fig, r, "Linear interpolation between two solutions",
            f"(1 − α)·A + α·B  from  A = {(a_name)}  to  B = {(b_name)}")
    _place_buttons(fig)
    return fig


# ============================================================================ rays

def _rays(r: Any) -> go.Figure:
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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
                    hovertemplate=f"<b>{(names[c])}</b>, ray %{{customdata[0]}}<br>distance "
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
                    hovertemplate=f"<b>{(names[c])}</b>: mean over rays<br>distance %{{customdata[0]}}"
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


# ============================================================================ segments

def _segments(r: Any) -> go.Figure:
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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
    r = html_safe(r)  # every string from the file escaped, once (style.esc)
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

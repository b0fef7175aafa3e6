"""The figure of any result (dispatch on its ``analysis``), self-contained HTML pages,
run-directory reports and PNG export."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from landscape import files
from landscape.errors import UserError
from landscape.plots.compare import _compare
from landscape.plots.lines import _interpolate, _rays, _segments, _twopoint
from landscape.plots.planes import _surface, _trajectory
from landscape.plots.sharpness import _sharpness
from landscape.plots.summaries import describe
from landscape.plots.style import (
    CONFIG, PAGE_CSS, PALETTE, _as_list, _exact, _finish, _gaps, _place_buttons, _scale_buttons, _text, esc,
    html_safe,
)


# ============================================================================ figure

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
        return draw(html_safe(result))  # every string from the file escaped, once (style.esc)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        # A file with the right attributes but data of the wrong kinds or shapes.
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"{where}: {analysis} result is missing or has malformed data ({reason})") from None


# ============================================================================ HTML

def write_html(figures: Sequence[go.Figure | str], path: str | os.PathLike, title: str,
               caption_html: str = "") -> Path:
    """One self-contained page: plotly.js embedded once, then every figure; written atomically.

    Items of ``figures`` that are strings are inserted as HTML fragments (headings, tables)
    in order. ``caption_html`` goes under the page title. Returns the path written.
    """
    path = files.check_writable(path)  # a directory, read-only, no permission: one line, now
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
        f"<title>{esc(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{esc(title)}</h1>\n"
        + (f'<div class="caption">{caption_html}</div>\n' if caption_html else "")
        + "\n".join(parts)
        + f"\n<footer>made by landscape {_version()} · plotly.js embedded; this page works offline</footer>"
        + "\n</main>\n</body>\n</html>\n"
    )
    files.atomic_write_text(path, page)
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
    out = files.check_writable(Path(out) if out is not None else path.with_suffix(".html"))
    fig = figure(result)
    title = f"{_text(result.attrs.get('analysis'))}: {path.name}"
    return write_html([fig], out, title)


# ============================================================================ run directories

def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``. A torn last line (a run killed mid-write, or one
    still being written) is left out; any other line that is not a JSON object is an error."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if n == len(lines):  # no newline after it: torn
                break
            raise UserError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: not a JSON object")
        rows.append(row)
    return rows


def _num(value: Any) -> float:
    """A metric from a file as a float; anything that is not a number is NaN (a gap)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _optimizer_dirs(run_dir: Path) -> list[Path]:
    """RUN/<optimizer> folders with a metrics.jsonl, in the run's optimizer order."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder)")
    found = {p.parent.name: p.parent for p in run_dir.glob("*/metrics.jsonl") if p.is_file()}
    cfg = _read_json(run_dir / "config.json") or {}
    inner = cfg.get("config") if isinstance(cfg.get("config"), dict) else cfg
    order = inner.get("optimizers") if isinstance(inner.get("optimizers"), list) else []
    order = [o for o in order if isinstance(o, str)]
    names = [o for o in order if o in found] + sorted(o for o in found if o not in order)
    return [found[n] for n in names]


def metrics_figure(run_dir: str | os.PathLike) -> go.Figure:
    """Per-epoch train/test loss and accuracy of every optimizer of a run, and the LR schedule.

    Solid lines: the iterate; dashed: the averaged model (swa, asgd, phase, --average).
    Folder names and values come from files: names are escaped, values that are not numbers
    are gaps.
    """
    run_dir = Path(run_dir)
    dirs = _optimizer_dirs(run_dir)
    if not dirs:
        raise UserError(f"{run_dir}: no RUN/<optimizer>/metrics.jsonl found; is this a run directory?")
    fig = make_subplots(rows=3, cols=2, row_heights=[0.4, 0.4, 0.2], vertical_spacing=0.13,
                        horizontal_spacing=0.08, shared_xaxes=True,
                        specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
                        subplot_titles=("Train loss", "Test loss", "Train accuracy (%)", "Test accuracy (%)",
                                        "Learning rate"))
    late: dict[int, list[float]] = {1: [], 2: []}  # accuracy values of the last third of the epochs, per column
    for i, d in enumerate(dirs):
        rows = _read_metrics(d / "metrics.jsonl")
        if not rows:
            continue
        name, color = esc(d.name), PALETTE[i % len(PALETTE)]
        epoch = _gaps([_num(row.get("epoch")) for row in rows])
        cut = 2 / 3 * max((e for e in epoch if e is not None), default=0.0)  # the last third of the epochs

        def col(key: str, scale: float = 1.0) -> list | None:
            vals = [row.get(key) for row in rows]
            if all(v is None for v in vals):
                return None
            return _gaps([_num(v) * scale for v in vals])

        def exact(key: str) -> list[str]:
            return [_exact(_num(row[key])) if row.get(key) is not None else "n/a" for row in rows]

        for key, r_, c_, scale, unit in (("train_loss", 1, 1, 1, "loss"), ("test_loss", 1, 2, 1, "loss"),
                                         ("train_acc", 2, 1, 100, "accuracy %"),
                                         ("test_acc", 2, 2, 100, "accuracy %")):
            for averaged in (False, True):
                k = f"averaged_{key}" if averaged else key
                ys = col(k, scale)
                if ys is None:
                    continue
                label = f"{name} (averaged)" if averaged else name
                if r_ == 2:
                    late[c_] += [y for e, y in zip(epoch, ys) if e is not None and y is not None and e >= cut]
                fig.add_trace(go.Scatter(
                    x=epoch, y=ys, mode="lines+markers" if len(rows) <= 40 else "lines", name=label,
                    legendgroup=label, marker=dict(size=5),
                    showlegend=(r_, c_) == (1, 1),
                    line=dict(color=color, width=2.6, dash="dash" if averaged else "solid"),
                    customdata=exact(k),
                    hovertemplate=f"<b>{label}</b> epoch %{{x}}<br>{k.replace('_', ' ')} = "
                                  "%{customdata}<extra></extra>",
                ), row=r_, col=c_)
        lr = col("lr")
        if lr is not None:
            fig.add_trace(go.Scatter(
                x=epoch, y=lr, mode="lines", name=f"{name} lr", legendgroup=name, showlegend=False,
                line=dict(color=color, width=2.2, shape="hv"),
                customdata=exact("lr"),
                hovertemplate=f"<b>{name}</b> epoch %{{x}}<br>lr (last step) = %{{customdata}}"
                              "<extra></extra>",
            ), row=3, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=2, col=1)
    fig.update_yaxes(title_text="lr", type="log", dtick=1, row=3, col=1)
    for r_, c_ in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 1)):
        fig.update_xaxes(title_text="epoch", showticklabels=True, row=r_, col=c_)
    # The differences that matter (tenths of a point at the end) vanish on a 30-100% axis:
    # the accuracy panels open zoomed on the last third of the epochs.
    zoomed = False
    for c_, values in late.items():
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) >= 2:
            lo, hi = min(finite), max(finite)
            pad = max(0.15 * (hi - lo), 0.25)
            fig.update_yaxes(range=[lo - pad, min(hi + pad, 100.5)], row=2, col=c_)
            zoomed = True
    fig.update_layout(updatemenus=[_scale_buttons(["yaxis", "yaxis2"])])
    _finish(fig, None, f"Training curves: {esc(run_dir.name)}",
            "per epoch, evaluated on the full splits; solid: iterate, dashed: averaged model"
            + ("; accuracy zoomed on the last third of the epochs (double-click a panel to see all)" if zoomed else ""),
            height=960, caption_shift=0, legend_top=False, right_margin=30)
    _place_buttons(fig)
    return fig


def _summary_table(run_dir: Path) -> str:
    head = ("<tr><th>optimizer</th><th>epochs</th><th>final test acc.</th><th>averaged test acc.</th>"
            "<th>best test acc. (epoch)</th><th>final train loss</th></tr>")
    body = []
    for d in _optimizer_dirs(run_dir):
        rows = _read_metrics(d / "metrics.jsonl")
        if not rows:
            body.append(f"<tr><td>{esc(d.name)}</td><td colspan=5>no epochs finished</td></tr>")
            continue
        last = rows[-1]

        def pct(v: Any) -> str:
            return "—" if not np.isfinite(_num(v)) else f"{100 * _num(v):.2f}%"

        accs = [(_num(r.get("test_acc")), r.get("epoch")) for r in rows if np.isfinite(_num(r.get("test_acc")))]
        best = max(accs, key=lambda a: a[0]) if accs else None
        loss = _num(last.get("train_loss"))
        body.append(
            f"<tr><td>{esc(d.name)}</td><td>{esc(last.get('epoch', len(rows)))}</td>"
            f"<td>{pct(last.get('test_acc'))}</td><td>{pct(last.get('averaged_test_acc'))}</td>"
            f"<td>{pct(best[0]) + f' ({esc(best[1])})' if best else '—'}</td>"
            f"<td>{'—' if math.isnan(loss) else f'{loss:.4g}'}</td></tr>")
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
    except (KeyError, IndexError, TypeError, ValueError, UserError) as exc:
        return f'<p class="error">could not read {esc(str(path))}: {esc(str(exc))}</p>'
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
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cols) + "</tr>")
    seeds = _as_list(r.attrs.get("seeds", []))
    note = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {_text(r.attrs.get('epochs', '?'))} epochs; "
            f"{_text(r.attrs.get('std', ''))}" + (f"; Δ: {_text(r.attrs.get('ci', ''))}" if has_diff else "")
            + f". Command: {_text(r.attrs.get('command', ''))}")
    return (f'<table class="summary"><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>'
            f'{"".join(body)}</table><p class="caption">{esc(note)}</p>')


def _run_caption(run_dir: Path) -> str:
    config = run_dir / "config.json"
    if not config.exists():
        return f"run directory <code>{esc(run_dir)}</code>"
    cfg = _read_json(config)
    if cfg is None:
        return f"run directory <code>{esc(run_dir)}</code> (config.json unreadable)"
    c = cfg.get("config") if isinstance(cfg.get("config"), dict) else cfg
    parts = [f"run <code>{esc(run_dir)}</code>"]
    for key in ("dataset", "model", "optimizers", "epochs", "batch_size", "phases", "schedule", "seed"):
        if key in c and c[key] not in (None, "", []):
            v = c[key]
            v = ", ".join(map(_text, v)) if isinstance(v, list) else v
            parts.append(f"<b>{key.replace('_', ' ')}</b> {esc(v)}")
    if cfg.get("device"):
        parts.append(f"<b>device</b> {esc(cfg['device'])}")
    return " · ".join(parts)


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """One page for a run (training curves, a summary table) and every result file inside it; any
    folder of result files works too."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder)")
    out = files.check_writable(Path(out) if out is not None else run_dir / "report.html")  # before any work
    compare_h5 = run_dir / "compare.h5"  # `landscape compare` output: its table first
    from landscape.plots.flatness import section as flatness_section
    items: list[go.Figure | str] = flatness_section(run_dir)  # the solutions' flatness in numbers, on top
    if compare_h5.is_file():
        items += ["<h2>Comparison</h2>", _compare_section(compare_h5)]
        try:
            from landscape.store import load_result
            items.append(figure(load_result(compare_h5)))
        except UserError as exc:
            items.append(f'<p class="error">could not draw compare.h5: {esc(str(exc))}</p>')
    if _optimizer_dirs(run_dir):
        items += ["<h2>Training</h2>", _summary_table(run_dir), metrics_figure(run_dir)]
    results = sorted(p for p in run_dir.rglob("*.h5") if p.is_file() and p != compare_h5)
    if not items and not results:
        raise UserError(f"{run_dir}: nothing to report: no run (RUN/<optimizer>/metrics.jsonl), no compare.h5 "
                        "and no result files (.h5)")
    if results:
        from landscape.store import load_result
    for p in results:
        rel = p.relative_to(run_dir)
        try:
            result = load_result(p)
        except UserError as exc:
            items += [f"<h2>{esc(rel)}</h2>", f'<p class="error">could not read {esc(str(rel))}: {esc(str(exc))}</p>']
            continue
        title, takeaway = describe(result)
        items.append(f'<h2>{esc(title)} <span class="file">{esc(rel)}</span></h2>')
        if takeaway:
            items.append(f'<p class="takeaway">{esc(takeaway)}</p>')
        try:
            items.append(figure(result))
        except UserError as exc:
            items.append(f'<p class="error">could not draw {esc(str(rel))}: {esc(str(exc))}</p>')
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
    path = files.check_writable(path)
    try:
        image = fig.to_image(format="png", scale=scale)  # in memory: a full disk is then a plain write error
    except Exception as exc:
        raise UserError(f"PNG export failed: {' '.join(str(exc).split())[:300]}") from None
    return files.atomic_write_bytes(path, image)

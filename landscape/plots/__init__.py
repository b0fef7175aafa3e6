"""Plotly figures from HDF5 results, and self-contained HTML pages that hold them.

This is the only package that draws. It reads result files through
:func:`landscape.store.load_result` and run directories through their ``metrics.jsonl``
files; it never computes a loss.

* :func:`figure` draws one result by its ``analysis`` attribute (interpolate, rays, surface,
  segments, twopoint, trajectory, sharpness, compare);
* :func:`write_html` puts figures (and HTML fragments) on one page with plotly.js embedded
  once, so the file opens offline; :func:`plot_result` does both for one file;
* :func:`metrics_figure` and :func:`report` draw a whole run directory;
* :func:`save_png` exports a static image through kaleido when it is installed;
* :func:`static_fallback` makes ``fig.show()`` in a notebook also carry a PNG.

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

Modules: :mod:`~landscape.plots.style` (palette, caption, layout helpers every figure shares),
:mod:`~landscape.plots.lines` (interpolate, rays, segments, twopoint),
:mod:`~landscape.plots.planes` (surface, trajectory), :mod:`~landscape.plots.sharpness`,
:mod:`~landscape.plots.compare`, and :mod:`~landscape.plots.pages` (dispatch, HTML pages,
run-directory reports, PNG).
"""

from landscape.plots.notebook import static_fallback
from landscape.plots.pages import ANALYSES, figure, metrics_figure, plot_result, report, save_png, write_html
from landscape.plots.style import (  # noqa: F401  (public names of the former single module)
    CAPTION_LINE_PX, CAPTION_WIDTH, CONFIG, DIVERGED, DIVERGED_NAME, FONT, HEIGHT, LEGEND_TOP, PAGE_CSS, PALETTE,
    RAY_UNITS, SPLIT_COLORS, TOP_MARGIN, caption, checkpoint_name,
)

__all__ = ["figure", "write_html", "plot_result", "metrics_figure", "report", "save_png", "caption",
           "static_fallback", "ANALYSES"]

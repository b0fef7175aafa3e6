"""Figures in notebooks that render anywhere: the interactive Plotly figure plus a static PNG.

Jupyter shows the interactive figure from its Plotly data; viewers without JavaScript
(GitHub, nbconvert HTML, most notebook previews) show nothing of it, but do show a PNG
carried in the same output. :func:`static_fallback` makes every ``fig.show()`` carry both.
"""

from __future__ import annotations

import atexit
import warnings


def static_fallback() -> bool:
    """Make every ``fig.show()`` in this kernel also embed a PNG of the figure.

    Needs kaleido and a Chrome or Chromium (kaleido's own browser download is never used).
    One browser is kept running for the whole kernel, so each figure costs well under a
    second after the first. Without them nothing changes: a warning says why and False is
    returned (the figures stay interactive only).
    """
    import plotly.graph_objects as go
    import plotly.io as pio

    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The kopts argument is ignored", category=UserWarning)
            go.Figure().to_image(format="png")  # fails now, not at the first figure, without a browser
    except Exception as exc:  # ImportError, no Chrome found, a browser that does not start
        warnings.warn(f"static PNG copies of figures are off ({type(exc).__name__}: {exc}); install kaleido and "
                      "chromium for figures that render on GitHub and in nbconvert HTML", stacklevel=2)
        return False
    # plotly passes kaleido options that a running server ignores; the warning says only that.
    warnings.filterwarnings("ignore", message="The kopts argument is ignored", category=UserWarning)
    pio.renderers.default = "plotly_mimetype+png"
    return True

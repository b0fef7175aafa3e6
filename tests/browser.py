"""A small headless-Chromium driver for the rendering tests.

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (fd 3: commands to
the browser, fd 4: replies and events, each message a NUL-terminated JSON object), so it
needs no websocket package and no free TCP port. :meth:`Browser.load` opens a
local HTML file, waits until every Plotly div has drawn, and returns what a test asserts:
console errors, uncaught exceptions, network requests, per-div trace counts, and a
full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    # WebGL (plotly's 3-D surfaces) on the CPU rasterizer, since --disable-gpu is set.
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--hide-scrollbars",
]

# Runs in the page once it has loaded: waits (up to the timeout) until every Plotly div has
# a full layout and its SVG, then reports what was drawn per div.
PROBE = r"""
(async () => {
  const deadline = Date.now() + %(timeout_ms)d;
  const divs = () => Array.from(document.querySelectorAll('.js-plotly-plot'));
  const ready = () => divs().every(gd => gd._fullLayout && gd.querySelector('.main-svg'));
  while (Date.now() < deadline && !(divs().length >= %(expect_divs)d && ready())) {
    await new Promise(r => setTimeout(r, 50));
  }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return {
    plotly: typeof Plotly === 'undefined' ? null : Plotly.version,
    title: document.title,
    divs: divs().map(gd => ({
      id: gd.id,
      traces: (gd.data || []).length,
      visible: (gd._fullData || []).filter(t => t.visible === true).length,
      types: (gd._fullData || []).map(t => t.type),
      container: !!gd.querySelector('.plot-container.plotly'),
      main_svg: gd.querySelectorAll('.main-svg').length,
      svg_traces: gd.querySelectorAll('.scatterlayer .trace, .barlayer .trace, g.contour, g.hm').length,
      gl_scenes: gd.querySelectorAll('.gl-container > div').length,
      nulls: (gd.data || []).reduce((n, t) => n + ['x', 'y', 'z'].reduce(
        (m, k) => m + (Array.isArray(t[k]) ? t[k].flat(2).filter(v => v === null).length : 0), 0), 0),
      width: gd.getBoundingClientRect().width,
      height: gd.getBoundingClientRect().height,
    })),
  };
})()
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None. ``LANDSCAPE_CHROMIUM`` overrides the search."""
    explicit = os.environ.get("LANDSCAPE_CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


@dataclass
class Page:
    """What loading one page produced."""

    url: str
    divs: list[dict[str, Any]]
    plotly_version: str | None
    title: str
    console_errors: list[str] = field(default_factory=list)  # console.error, uncaught exceptions, log errors
    console_messages: list[str] = field(default_factory=list)  # everything the page logged
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshot: Path | None = None

    @property
    def external_requests(self) -> list[str]:
        local = ("file:", "data:", "blob:", "about:", "chrome-error:")
        return [u for u in self.requests if not u.startswith(local)]


class BrowserError(RuntimeError):
    pass


class _Chromium:
    """One headless browser process driven over the DevTools pipe."""

    def __init__(self, binary: str, width: int, height: int):
        self.profile = tempfile.mkdtemp(prefix="landscape-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            # Move both ends above 4 first, so that neither dup2 clobbers the other.
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)  # dup2 makes the targets inheritable
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4), preexec_fn=wire_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # -- protocol

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0, session: str | None = None) -> dict[str, Any]:
        def wanted(event: dict[str, Any]) -> bool:
            return event.get("method") == method and (session is None or event.get("sessionId") == session)

        for i, event in enumerate(self.events):
            if wanted(event):
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            if wanted(event):
                return event
            self.events.append(event)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for the browser")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                stderr = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise BrowserError(f"the browser closed the DevTools pipe (exit {self.proc.poll()}): {stderr}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    # -- lifetime

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)


class Browser:
    """A headless Chromium that loads pages one after another (one process, one tab per page).

    >>> with Browser() as b:
    ...     page = b.load("figure.html", screenshot="figure.png")
    """

    def __init__(self, binary: str | None = None, width: int = 1400, height: int = 900):
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError("no chromium binary found")
        self.width, self.height = width, height
        self._chromium = _Chromium(binary, width, height)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._chromium.close()

    def load(self, html: str | Path, screenshot: str | Path | None = None, *, expect_divs: int = 1,
             timeout: float = 60.0, script: str | None = None) -> Page:
        """Open ``html``, wait until every Plotly div has drawn, and report what happened.

        ``script``: JavaScript (may return a promise) evaluated after the plots have drawn,
        e.g. switching a figure to its 3-D view; the page is probed again afterwards.
        ``screenshot``: where to save a full-page PNG.
        """
        b, width, height = self._chromium, self.width, self.height
        url = Path(html).resolve().as_uri()
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                b.send(f"{domain}.enable", session=session)
            b.send("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            b.send("Page.navigate", {"url": url}, session=session)
            b.wait_for("Page.loadEventFired", timeout=timeout, session=session)
            probe = PROBE % {"timeout_ms": int(timeout * 1000 * 0.8), "expect_divs": expect_divs}
            state = _evaluate(b, session, probe, timeout)
            if script:
                _evaluate(b, session, script, timeout)
                state = _evaluate(b, session, probe, timeout)
            shot = None
            if screenshot is not None:
                metrics = b.send("Page.getLayoutMetrics", session=session)
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                clip = {"x": 0, "y": 0, "width": width, "height": min(int(size["height"]) + 1, 16000),
                        "scale": 1}
                data = b.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                         "captureBeyondViewport": True},
                              session=session, timeout=timeout)["data"]
                shot = Path(screenshot)
                shot.parent.mkdir(parents=True, exist_ok=True)
                shot.write_bytes(base64.b64decode(data))
            b.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush queued events
            page = Page(url=url, divs=state["divs"], plotly_version=state["plotly"], title=state["title"],
                        screenshot=shot)
            mine = [e for e in b.events if e.get("sessionId") == session]
            b.events = [e for e in b.events if e.get("sessionId") != session]
            _collect(mine, page)
            return page
        finally:
            try:
                b.send("Target.closeTarget", {"targetId": target})
            except BrowserError:
                pass


def load_page(html: str | Path, screenshot: str | Path | None = None, **kwargs: Any) -> Page:
    """:meth:`Browser.load` in a browser of its own."""
    with Browser() as browser:
        return browser.load(html, screenshot, **kwargs)


def _evaluate(browser: _Chromium, session: str, expression: str, timeout: float) -> Any:
    reply = browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                              "returnByValue": True}, session=session, timeout=timeout)
    if "exceptionDetails" in reply:
        details = reply["exceptionDetails"]
        text = details.get("exception", {}).get("description") or details.get("text")
        raise BrowserError(f"script failed in the page: {text}")
    return reply["result"].get("value")


def _collect(events: list[dict[str, Any]], page: Page) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            page.console_messages.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                page.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            page.console_errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            page.console_messages.append(f"log {entry.get('level')}: {entry.get('text')}")
            if entry.get("level") == "error":
                page.console_errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
        elif method == "Network.requestWillBeSent":
            page.requests.append(params.get("request", {}).get("url", ""))

"""A real headless Chromium for tests: the DevTools protocol over a pipe, stdlib only.

Chromium is started with ``--remote-debugging-pipe``: it reads commands on its
fd 3 and writes replies and events on its fd 4, each a JSON object ended by a
NUL byte. No port, no websocket, no package. Every read has a deadline, so a
hung browser fails the test instead of hanging it. Each browser has its own
profile directory (runs coexist) and resolves no host name (nothing can be
fetched from the network, even by mistake).

    with Browser(tmp_path) as b:
        page = b.open(path)            # navigates, waits for the load event
        page.js("document.title")
        page.click("#items th")        # real mouse events at the element's centre
        page.type_text("fail")         # into the focused element
        page.errors(); page.requests()
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium",)
READ_DEADLINE = 60.0
"""Seconds one command's reply (or an awaited event) may take before the test fails."""

NOT_INSTALLED = "chromium is not installed: `make test` installs it (Debian package chromium)"


class BrowserError(AssertionError):
    """The browser did not answer in time, exited, or answered a command with an error."""


def find_chromium() -> str | None:
    """The real binary (not Debian's wrapper script, which adds options), else the PATH's."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def require_chromium() -> str:
    """The binary, or skip the test with the reason and the fix."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(NOT_INSTALLED)
    return binary


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium process, driven over its debugging pipe."""

    def __init__(
        self, tmp: Path, *, width: int = 1280, height: int = 900, deadline: float = READ_DEADLINE
    ) -> None:
        binary = require_chromium()
        self.deadline = deadline
        self.profile = tmp / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        # Above 10, so that the shell's redirections to 3 and 4 clobber none of them.
        to_child, from_child = (_high(fd) for fd in (to_child, from_child))
        args = [
            "--headless=new",
            "--no-sandbox",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # bash puts the pipe's ends on fds 3 and 4 (no preexec_fn: fork-safe);
        # dash would take no fd above 9.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child} 4>&{from_child}', binary, *args],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._id = 0
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command, wait (with a deadline) for its reply; events seen meanwhile are kept."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.deadline
        while True:
            m = self._next(deadline, f"the reply to {method}")
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})  # type: ignore[no-any-return]
            self.events.append(m)

    def _next(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._r], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"chromium did not send {what} within {self.deadline:g} s")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium exited (status {self.proc.poll()}) before {what}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\0", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session)
        return Page(self, session, target)

    def open(self, path: Path) -> Page:
        """A new tab showing ``path``, once its load event fired."""
        page = self.new_page()
        page.navigate(path.resolve().as_uri())
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrowserError, OSError):
                os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._w, self._r):
            with contextlib.suppress(OSError):
                os.close(fd)


class Page:
    """One tab: evaluate JavaScript, click, type, read what it logged and fetched."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self.url = ""

    def close(self) -> None:
        """Close the tab (its memory is freed: a browser may open many pages in turn)."""
        self.browser.send("Target.closeTarget", targetId=self.target)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, self.session, **params)

    def navigate(self, url: str) -> None:
        since = len(self.browser.events)
        self.url = url
        self.send("Page.navigate", url=url)
        self._wait(self.browser.events, "Page.loadEventFired", since)

    def _wait(self, events: list[dict[str, Any]], method: str, since: int) -> None:
        deadline = time.monotonic() + self.browser.deadline
        while not any(
            e.get("method") == method and e.get("sessionId") == self.session for e in events[since:]
        ):
            events.append(self.browser._next(deadline, f"event {method}"))

    def js(self, expression: str) -> Any:
        """The value of ``expression`` (a thrown exception fails the test)."""
        reply = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def click(self, selector: str, index: int = 0) -> None:
        """A real left click (mouse pressed, released) at the centre of the element."""
        where = self.js(
            f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}];"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()"
        )
        if where is None:
            raise BrowserError(f"no element {selector!r} [{index}] to click")
        x, y = where
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type_text(self, text: str, selector: str | None = None) -> None:
        """Type ``text`` as a keyboard would (into ``selector``, focused first, if given)."""
        if selector is not None:
            self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [
            e["params"]
            for e in self.browser.events
            if e.get("method") == method and e.get("sessionId") == self.session
        ]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and errors the browser logged, as text."""
        self.js("0")  # a round trip: events sent before it are read
        out = [
            " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            for p in self._events("Runtime.consoleAPICalled")
            if p["type"] in ("error", "assert")
        ]
        out += [
            str(p["exceptionDetails"].get("exception", {}).get("description"))
            or p["exceptionDetails"]["text"]
            for p in self._events("Runtime.exceptionThrown")
        ]
        out += [
            p["entry"]["text"]
            for p in self._events("Log.entryAdded")
            if p["entry"]["level"] == "error"
        ]
        return out

    def requests(self) -> list[str]:
        """The URL of every request the page made (the page's own file included)."""
        self.js("0")
        return [p["request"]["url"] for p in self._events("Network.requestWillBeSent")]


def asset(name: str) -> str:
    """An asset of the HTML report (``engine/views/report_assets``), as the report embeds it."""
    from importlib.resources import files

    return (files("engine.views") / "report_assets" / name).read_text(encoding="utf-8")


def island_page(report_json: bytes, title: str = "report") -> str:
    """A page with only the item table's contract of the HTML report: the section, the
    data island (``</`` escaped), and the report's CSS and JavaScript."""
    data = report_json.decode().replace("</", "<\\/")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{asset('report.css')}</style></head><body>"
        '<section id="items-section"><h2>Items</h2><div id="items"></div>'
        "<noscript>the item table needs JavaScript</noscript></section>"
        f'<script type="application/json" id="report-data">{data}</script>'
        f"<script>{asset('report.js')}</script></body></html>"
    )

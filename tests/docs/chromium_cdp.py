"""Debian's headless Chromium, driven over the Chrome DevTools Protocol (CDP).

Just enough of a browser for the docs-site tests: open a page, wait for it to load,
run JavaScript in it, type into it, and list what it asked of the network. CDP is
JSON over one websocket (https://chromedevtools.github.io/devtools-protocol/), so
this needs `websockets` and nothing that downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: Debian's package (apt-get install chromium).
CHROMIUM = Path("/usr/bin/chromium")
#: A quiet, isolated headless browser; --user-data-dir is added. No sandbox (tests may run
#: as root) and no /dev/shm (a container gives it 64 MB).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)
#: Seconds to wait for the browser to start, a page to load, a script to answer.
START_TIMEOUT = 60.0
LOAD_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    """The browser did not start or a page did not do what was asked in time."""


class Page:
    """One tab, spoken to over its CDP websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        #: Every event received so far, in order: (method, params).
        self.events: list[tuple[str, dict[str, Any]]] = []
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        sent = next(self.ids)
        self.socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        deadline = time.monotonic() + LOAD_TIMEOUT
        while True:
            message = self._receive(deadline, f"an answer to {method}")
            if message.get("id") == sent:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def wait_for_event(self, method: str, since: int, timeout: float = LOAD_TIMEOUT) -> None:
        """Wait for a ``method`` event after the first ``since`` events received."""
        deadline = time.monotonic() + timeout
        while not any(name == method for name, _ in self.events[since:]):
            self._receive(deadline, f"the event {method}")

    def _receive(self, deadline: float, awaited: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        try:
            message = json.loads(self.socket.recv(timeout=max(left, 0.0)))
        except TimeoutError:
            raise BrowserError(f"Chromium sent no {awaited} in time") from None
        if "method" in message:
            self.events.append((message["method"], message.get("params", {})))
        return dict(message)

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until its load event (scripts, styles, images)."""
        since = len(self.events)
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired", since)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = LOAD_TIMEOUT) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still false after {timeout:.0f} s")
            time.sleep(0.1)
        return value

    def type_text(self, text: str) -> None:
        """Type into the focused element as a user would (input events fire)."""
        self.call("Input.insertText", text=text)

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since the tab opened (documents, scripts, XHR...)."""
        return [
            params["request"]["url"]
            for method, params in self.events
            if method == "Network.requestWillBeSent"
        ]


@contextlib.contextmanager
def chromium(profile: Path, binary: Path = CHROMIUM) -> Iterator[Page]:
    """Start headless Chromium with a fresh profile in ``profile``; yield its one tab.

    The browser is its own process group (its renderers and helpers too), and the
    whole group is stopped on the way out, whatever happened.
    """
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(binary), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    socket = None
    try:
        port = _debugging_port(profile, process, log)
        socket = connect(_page_socket(port), max_size=None, proxy=None, open_timeout=30)
        yield Page(socket)
    finally:
        if socket is not None:
            socket.close()
        _stop(process)


def _debugging_port(profile: Path, process: subprocess.Popen[bytes], log: Path) -> int:
    """Chromium writes the port it chose (--remote-debugging-port=0) into the profile,
    then the browser's websocket path: with both lines there, the port is whole."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"Chromium exited ({process.returncode}): {log.read_text()[-2000:]}")
        if active.is_file() and len(lines := active.read_text().split()) >= 2:
            return int(lines[0])
        time.sleep(0.1)
    raise BrowserError(f"Chromium did not open its debugging port in {START_TIMEOUT:.0f} s")


def _page_socket(port: int) -> str:
    """The websocket of the browser's first tab (plain HTTP to 127.0.0.1: no proxy)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
    try:
        connection.request("GET", "/json/list")
        targets = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
    if not pages:
        raise BrowserError(f"Chromium has no tab to drive: {targets}")
    return str(pages[0])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the browser's process group; kill whatever is left of it after 10 s
    (the browser if stuck, helpers that outlived it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)

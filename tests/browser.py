"""A real browser for the tests: headless Chromium driven over the DevTools
protocol (a WebSocket), started in a temporary profile and stopped by PID.
Pages count as working only once Chromium has run them."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Optional

import pytest
from websockets.sync.client import connect

from support import find_tool, requires

CHROMIUM = find_tool("chromium")


def needs_chromium() -> pytest.MarkDecorator:
    """Skip where no Chromium is installed; under CI (.ci/run installs it) fail instead."""
    return requires("chromium")


class Browser:
    """One headless Chromium with one page.  Use as a context manager."""

    def __init__(self, timeout_s: float = 20.0) -> None:
        self.timeout_s = timeout_s
        # Chromium puts its singleton socket in $TMPDIR (org.chromium.Chromium.*),
        # not in the profile: both live under one directory removed on exit.
        self.root = tempfile.mkdtemp(prefix="beastnet-chromium-")
        self.profile = os.path.join(self.root, "profile")
        os.mkdir(os.path.join(self.root, "tmp"))
        self.proc: Optional[subprocess.Popen] = None
        self.ws: Any = None
        self._closing = contextlib.ExitStack()
        self.errors: list[str] = []
        self._id = 0

    def __enter__(self) -> "Browser":
        try:
            return self._start()
        except BaseException:
            self.__exit__()             # never leave a Chromium behind
            raise

    def _start(self) -> "Browser":
        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": os.path.join(self.root, "tmp")},
            start_new_session=True)     # its helpers (zygote, renderer) in a group of ours
        port = None
        deadline = time.monotonic() + self.timeout_s
        assert self.proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        if port is None:
            raise RuntimeError("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = self._closing.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout_s))
        self.call("Runtime.enable")
        self.call("Page.enable")
        return self

    def call(self, method: str, **params: Any) -> dict:
        """One DevTools command; events that arrive meanwhile are scanned for
        page errors (uncaught exceptions, console errors)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)
        raise TimeoutError(method)

    def _note(self, msg: dict) -> None:
        if msg.get("method") == "Runtime.exceptionThrown":
            self.errors.append(msg["params"]["exceptionDetails"].get("text", "exception"))
        elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
            self.errors.append(" ".join(str(a.get("value")) for a in msg["params"]["args"]))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: Optional[float] = None) -> Any:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {expression}")
            time.sleep(0.05)

    def screenshot(self, path: str) -> None:
        import base64
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def __exit__(self, *exc: object) -> None:
        self._closing.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            # Helpers that outlive the browser process would write into the
            # profile while it is removed (a half-removed directory was left).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

"""Server-side counters beside the client's timeline: `ServerStatsSampler`
reads a beastnet server's ``/admin/stats`` once a second while a load runs.

It only reads over HTTP, on its own thread, so a slow or dead admin endpoint
never delays the generator or its timeline; a failed read is counted and the
last error kept, never raised.  Rows carry wall-clock times so the report can
line them up with the client rows (`LoadResult.started_at` + ``t``).
"""
from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import orjson

from beastnet._lifecycle import StartStop
from beastnet.counters import HTTP_COUNTERS, UDP_COUNTERS, tagged
from beastnet.errors import LoadConfigError

__all__ = ["SERVER_RATES", "TOKEN_ENV", "ServerStatsSampler", "rate_rows"]

#: The environment variable `--server-stats-token` falls back to.
TOKEN_ENV = "BEASTNET_ADMIN_TOKEN"

#: Per-second rates drawn in the report: (name, [(protocol, counter), ...]),
#: each the counters tagged "rate:NAME" in beastnet.counters (spaces for _).
_RATE_NAMES = ("rx", "tx", "kernel_drops", "queue_drops", "rate_limited")
SERVER_RATES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = tuple(
    (name.replace("_", " "), tuple((proto, counter) for proto, counters in
                                   (("udp", UDP_COUNTERS), ("http", HTTP_COUNTERS))
                                   for counter in tagged(counters, "rate:" + name)))
    for name in _RATE_NAMES)

TIMEOUT_S = 0.8                 # a read slower than this is skipped, not waited for


class ServerStatsSampler(StartStop):
    """Samples ``URL/admin/stats`` every `period_s` between `start()` and
    `stop()` (or as a context manager).  ``rows`` holds one dict per good
    read: ``at`` (wall clock, s) and each protocol's counter totals."""

    def __init__(self, url: str, token: Optional[str] = None, period_s: float = 1.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise LoadConfigError(f"--server-stats {url!r}: expected http://HOST:PORT")
        self.url = url.rstrip("/")
        if not self.url.endswith("/admin/stats"):
            self.url += "/admin/stats"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.period_s = period_s
        self.rows: list[dict[str, Any]] = []
        self.failures = 0
        self.last_error: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beastnet-server-stats",
                                        daemon=True)

    def read(self) -> dict[str, Any]:
        """One read of /admin/stats: {"at", "udp": totals, "http": totals}."""
        req = urllib.request.Request(self.url)
        if self.token:
            req.add_header("X-API-Key", self.token)
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            stats = orjson.loads(resp.read())
        row: dict[str, Any] = {"at": time.time()}
        for proto in ("udp", "http"):
            totals = (stats.get(proto) or {}).get("totals")
            if totals:
                row[proto] = {k: v for k, v in totals.items() if isinstance(v, int)}
        return row

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.rows.append(self.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self._failed(exc)
            next_at += self.period_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> "ServerStatsSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S + self.period_s + 1.0)
        try:                                # a last read: the counters at the end
            self.rows.append(self.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Count a failed read and keep why, in a few words."""
        self.failures += 1
        if isinstance(exc, urllib.error.HTTPError):
            hint = " (wrong or missing --server-stats-token?)" if exc.code in (401, 403) else ""
            self.last_error = f"HTTP {exc.code} {exc.reason}{hint}"
        else:
            reason = getattr(exc, "reason", None) or exc
            self.last_error = (reason.strerror.lower() if isinstance(reason, OSError)
                               and reason.strerror else str(reason))

    def to_dict(self) -> dict[str, Any]:
        """For the JSON report: the URL, the raw rows and the read failures."""
        return {"url": self.url, "rows": self.rows, "failures": self.failures,
                "last_error": self.last_error, "rates": rate_rows(self.rows)}


def _total(row: dict, parts: tuple[tuple[str, str], ...]) -> int:
    return sum(int((row.get(proto) or {}).get(name, 0)) for proto, name in parts)


def rate_rows(rows: list[dict]) -> list[dict[str, float]]:
    """Per-interval rates between consecutive reads: {"at": end (wall
    clock), "span_s", name: per second for each of `SERVER_RATES`}."""
    out = []
    for a, b in zip(rows, rows[1:]):
        span = b["at"] - a["at"]
        if span <= 0:
            continue
        rates: dict[str, float] = {"at": b["at"], "span_s": span}
        for name, parts in SERVER_RATES:
            rates[name] = max(0, _total(b, parts) - _total(a, parts)) / span
        out.append(rates)
    return out

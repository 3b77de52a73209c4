"""What one load run measured: `LoadResult`, and `machine_info` for where."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from beastnet.loadgen import _native
from beastnet.loadgen.histogram import Histogram

__all__ = ["LoadResult", "machine_info"]


@dataclass
class LoadResult:
    """What one load run measured (after warm-up).

    ``sent`` requests were sent in the measured window; each ended
    ``received`` (answered within the timeout: a latency sample), ``lost``
    (timed out) or, HTTP only, ``failed`` (its connection broke first).
    ``late`` replies came after their timeout, ``unmatched`` replies carried
    a tag of no outstanding request, ``bad_replies`` had no parsable tag;
    none of these is ever a latency sample.  ``errors`` sums
    ``errors_by_kind`` (send/receive/connect failures, e.g. ECONNREFUSED).
    ``error_replies`` are answers whose body is ``{"error":...}`` or, HTTP,
    whose status is >= 400 (included in ``received``); UDP counts them by
    name in ``error_bodies`` (HTTP: see ``status_codes``).  Open loop:
    ``unsent`` requests were due but never sent because every slot was busy.
    """

    mode: str = "udp"
    config: dict = field(default_factory=dict)
    sent: int = 0
    received: int = 0
    lost: int = 0
    failed: int = 0
    late: int = 0
    errors: int = 0
    unmatched: int = 0
    bad_replies: int = 0
    error_replies: int = 0
    unsent: int = 0
    errors_by_kind: dict = field(default_factory=dict)
    status_codes: dict = field(default_factory=dict)
    error_bodies: dict = field(default_factory=dict)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    timeline: list = field(default_factory=list)
    histogram: Histogram = field(default_factory=Histogram)
    interrupted: bool = False
    started_at: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Answered requests per second in the measured window."""
        return self.received / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def attempted(self) -> int:
        """Requests due in the measured window: sent, or (open loop) never sent."""
        return self.sent + self.unsent

    @property
    def ok(self) -> int:
        """Answered without an error body (or, HTTP, with a 2xx/3xx status)."""
        return self.received - self.error_replies

    @property
    def success_rate(self) -> float:
        return self.ok / self.attempted if self.attempted else 0.0

    @property
    def loss_rate(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    @property
    def cpu_per_request_us(self) -> float:
        """Generator CPU (user+sys, all its threads) per answered request."""
        return self.cpu_s / self.received * 1e6 if self.received else math.nan

    def percentile(self, q: float) -> float:
        """The q-th latency percentile in ns (NaN without samples)."""
        return self.histogram.percentile(q)

    @property
    def latency_ns(self) -> dict[str, float]:
        """p50, p90, p95, p99, p99.9, p99.99 and max, in ns."""
        return self.histogram.summary()

    def to_dict(self, histogram: bool = True) -> dict[str, Any]:
        """JSON-ready (orjson): counts, rates, latency, timeline, configuration."""
        lat = {k: (None if math.isnan(v) else v) for k, v in self.latency_ns.items()}
        out = {
            "mode": self.mode,
            "started_at": self.started_at,
            "interrupted": self.interrupted,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "received": self.received,
            "ok": self.ok,
            "lost": self.lost,
            "failed": self.failed,
            "late": self.late,
            "unmatched": self.unmatched,
            "bad_replies": self.bad_replies,
            "error_replies": self.error_replies,
            "unsent": self.unsent,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "status_codes": {str(k): v for k, v in self.status_codes.items()},
            "error_bodies": dict(self.error_bodies),
            "rps": self.rps,
            "success_rate": self.success_rate,
            "loss_rate": self.loss_rate,
            "cpu_s": self.cpu_s,
            "cpu_per_request_us": None if math.isnan(self.cpu_per_request_us)
            else self.cpu_per_request_us,
            "latency_ns": lat,
            "mean_ns": None if not self.histogram.total else self.histogram.mean_ns,
            "timeline": self.timeline,
            "config": self.config,
            "extra": self.extra,
        }
        if histogram:
            out["histogram"] = self.histogram.to_dict()
        return out


def machine_info() -> dict[str, Any]:
    """Where a result was measured: host, kernel, CPUs, Python, load average."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "beastnet_debug_build": bool(_native.DEBUG_BUILD),
    }

"""Prometheus text exposition (format 0.0.4) of beastnet's counters.

No client library on the serving path: `/metrics` is rendered from the same
snapshots `stats()` returns, on the control plane, when scraped.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["MetricFamily", "render", "udp_families", "http_families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricFamily:
    """One metric name with its HELP, TYPE and labelled samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(kind)
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: Any) -> "MetricFamily":
        self.samples.append(({k: str(v) for k, v in labels.items()}, value))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[MetricFamily]) -> bytes:
    lines = []
    for fam in families:
        sample_name = fam.name + "_total" if fam.kind == "counter" else fam.name
        lines.append(f"# HELP {sample_name} {fam.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {sample_name} {fam.kind}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{sample_name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{sample_name} {_number(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# (counter field, help) for the UDP reader counters, per socket.
UDP_COUNTERS: Sequence[tuple[str, str]] = (
    ("rx_packets", "Datagrams received."),
    ("rx_bytes", "Payload bytes received."),
    ("rx_batches", "recvmmsg calls that returned datagrams."),
    ("tx_packets", "Datagrams sent."),
    ("tx_bytes", "Payload bytes sent."),
    ("tx_batches", "sendmmsg calls that sent datagrams."),
    ("hits", "Requests answered from the response table."),
    ("misses", "Requests for keys the table does not hold."),
    ("not_found", "Misses answered not_found without a handler."),
    ("bad_requests", "Requests answered bad_request."),
    ("truncated", "Datagrams longer than the read slot."),
    ("empty", "Empty datagrams."),
    ("queued", "Misses handed to the miss queue."),
    ("queue_drops", "Misses answered busy because the miss queue was full."),
    ("send_errors", "Replies the kernel refused."),
    ("send_enobufs", "Replies refused for lack of buffer space."),
    ("recv_errors", "recvmmsg failures other than EAGAIN and EINTR."),
    ("kernel_drops", "Datagrams the kernel dropped before the reader (SO_RXQ_OVFL)."),
    ("eintr", "Syscalls interrupted and retried."),
    ("unauthorized", "Requests with a missing, unknown or revoked API key."),
    ("rate_limited", "Requests refused by a key's rate limit."),
    ("over_quota", "Requests refused by a key's monthly cap."),
)

MISS_PATH_COUNTERS: Sequence[tuple[str, str]] = (
    ("handler_calls", "Miss handler calls."),
    ("handler_errors", "Miss handler calls that raised."),
    ("miss_replies", "Replies sent by the control plane."),
    ("miss_cached", "Handler answers published to the table."),
    ("miss_cache_refused", "Handler answers not cached because the table was at max_keys."),
    ("miss_send_errors", "Control-plane replies the kernel refused."),
)


def udp_families(stats: Mapping[str, Any], prefix: str = "beastnet_udp") -> list[MetricFamily]:
    """Families for a `UDPServer.stats()` snapshot."""
    out = []
    for field, help_text in UDP_COUNTERS:
        fam = MetricFamily(f"{prefix}_{field}", "counter", help_text)
        for i, counters in enumerate(stats.get("per_socket", [])):
            fam.add(counters.get(field, 0), socket=i)
        out.append(fam)
    totals = stats.get("totals", {})
    for field, help_text in MISS_PATH_COUNTERS:
        if field in totals:
            out.append(MetricFamily(f"{prefix}_{field}", "counter", help_text).add(totals[field]))
    out.append(MetricFamily(f"{prefix}_sockets", "gauge", "Reader sockets.").add(stats.get("sockets", 0)))
    out.append(MetricFamily(f"{prefix}_cpu_steering", "gauge", "1 when CPU steering is active.")
               .add(bool(stats.get("steering", {}).get("enabled"))))
    out.append(MetricFamily(f"{prefix}_avg_batch_fill", "gauge", "Datagrams per recvmmsg call.")
               .add(float(stats.get("avg_batch_fill", 0.0))))
    return out


# HTTP worker counters that are levels, not running totals.
HTTP_GAUGES = frozenset({"active", "handler_inflight"})


def http_families(stats: Mapping[str, Any], prefix: str = "beastnet_http") -> list[MetricFamily]:
    """Families for an `HTTPServer.stats()` snapshot: every worker counter,
    labelled by worker thread, plus the control plane's totals."""
    per_thread = stats.get("per_thread", [])
    names = list(per_thread[0]) if per_thread else []
    out = []
    for name in names:
        kind = "gauge" if name in HTTP_GAUGES else "counter"
        fam = MetricFamily(f"{prefix}_{name}", kind, f"HTTP engine: {name.replace('_', ' ')}.")
        for i, counters in enumerate(per_thread):
            fam.add(counters.get(name, 0), thread=i)
        out.append(fam)
    totals = stats.get("totals", {})
    for field, help_text in MISS_PATH_COUNTERS:
        if field in totals:
            out.append(MetricFamily(f"{prefix}_{field}", "counter", help_text).add(totals[field]))
    out.append(MetricFamily(f"{prefix}_threads", "gauge", "HTTP worker threads.")
               .add(stats.get("threads", 0)))
    return out

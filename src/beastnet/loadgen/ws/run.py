"""WebSocket mode: `run_ws_load` opens many client connections to any
RFC 6455 server, subscribes, and measures what the server pushes: messages
and bytes per second, latency from a timestamp field, sequence gaps, stalls,
handshake times and reconnects (full-jitter exponential backoff)."""
from __future__ import annotations

import base64
import hashlib
import math
import os
from typing import Any, Optional

from beastnet.loadgen import _native
from beastnet.loadgen._driver import (Drive, ProgressCallback, StopWhen, ensure_fd_limit,
                                      native_args)
from beastnet.loadgen.histogram import Histogram
from beastnet.loadgen.http import (_http_sockaddr, _summary_ms, check_tls_failure, tls_context,
                                   tls_summary)
from beastnet.loadgen.result import LoadResult
from beastnet.loadgen.ws.config import CLOCK_RULE, TS_UNITS, WSLoadConfig, json_path

__all__ = ["run_ws_load"]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Histograms of a WebSocket run, as _ws_load.pxi numbers them.
HIST_UPGRADE, HIST_CONNECT, HIST_BACKOFF, HIST_OUTAGE, HIST_STALL, HIST_TLS = 2, 3, 4, 5, 6, 7
HIST_PROBE, HIST_REFUSED = 8, 9


def _upgrade_request(cfg: WSLoadConfig) -> tuple[bytes, bytes]:
    """The opening handshake and the Sec-WebSocket-Accept it must get back.
    One key serves every connection: servers check its form, not its novelty."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    host = cfg.host_header or (f"[{cfg.host}]" if ":" in cfg.host else cfg.host)
    if cfg.host_header is None and cfg.port != (443 if cfg.tls else 80):
        host = f"{host}:{cfg.port}"
    head = [f"GET {cfg.path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13"]
    if cfg.api_key is not None:
        head.append(f"X-API-Key: {cfg.api_key}")
    if cfg.deflate:
        head.append("Sec-WebSocket-Extensions: permessage-deflate")
    head += [h.strip() for h in cfg.headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"), accept


def _subscriptions(cfg: WSLoadConfig) -> tuple[list[bytes], list[list[int]]]:
    """Distinct subscribe payloads, and each connection's indexes into them."""
    payloads: list[bytes] = []
    index: dict[bytes, int] = {}
    per_conn: list[list[int]] = []
    for symbols in cfg.connection_symbols():
        mine = []
        for msg in cfg.subscribe_messages(symbols):
            if msg not in index:
                index[msg] = len(payloads)
                payloads.append(msg)
            mine.append(index[msg])
        per_conn.append(mine)
    return payloads, per_conn


def _summary(run: Any, which: int) -> dict[str, Optional[float]]:
    """A histogram's summary in ms: p50, p90, p95, p99, max, mean, count."""
    h = Histogram.from_native(run.histogram(which))
    out = _summary_ms(h)
    p95 = h.percentile(95)
    out["p95"] = None if math.isnan(p95) else round(p95 / 1e6, 6)
    return out


def run_ws_load(cfg: WSLoadConfig, progress: Optional[ProgressCallback] = None,
                stop_when: Optional[StopWhen] = None) -> LoadResult:
    """Run one WebSocket load test against any server and return what it measured.

    Blocking; native threads without the GIL; progress once a second; Ctrl-C
    returns the partial result.  ``received`` counts messages in the measured
    window, ``lost`` the sequence numbers skipped (with a ``seq_key``),
    ``sent`` their sum (so ``success_rate`` and ``loss_rate`` are delivery
    rates); the histogram is the timestamp latency.  ``extra`` holds rates, handshake times, stalls and reconnects.
    """
    cfg.validate()
    threads = min(cfg.threads, cfg.connections)
    counts = [len(range(i, cfg.connections, threads)) for i in range(threads)]
    ensure_fd_limit(cfg.connections + 2 * threads)
    family, sockaddr, address = _http_sockaddr(cfg.host, cfg.port)
    upgrade, accept = _upgrade_request(cfg)
    payloads, per_conn = _subscriptions(cfg)
    # Connections are dealt to threads in turn; the run wants them grouped by thread.
    grouped = [per_conn[c] for i in range(threads) for c in range(i, cfg.connections, threads)]
    args = native_args(cfg, threads)
    ts_path = json_path(cfg.ts_key) if cfg.ts_key is not None else None
    seq_path = json_path(cfg.seq_key) if cfg.seq_key is not None else None
    run = _native.WSLoadRun(
        sockaddr, family, counts, upgrade, accept, payloads, grouped,
        ts_key=b"" if cfg.ts_key is None or ts_path else f'"{cfg.ts_key}":'.encode(),
        ts_unit_ns=TS_UNITS[cfg.ts_unit],
        seq_key=b"" if cfg.seq_key is None or seq_path else f'"{cfg.seq_key}":'.encode(),
        connect_timeout_ns=int(cfg.connect_timeout_ms * 1e6),
        backoff_base_ns=int(cfg.backoff_base_ms * 1e6),
        backoff_cap_ns=int(cfg.backoff_cap_ms * 1e6),
        ping_interval_ns=int(cfg.ping_interval_ms * 1e6),
        pong_timeout_ns=int(cfg.pong_timeout_ms * 1e6), max_pending=cfg.max_pending,
        read_buffer=cfg.read_buffer, warmup_ns=args["warmup_ns"],
        duration_ns=args["duration_ns"], cpus=args["cpus"], seed=args["seed"],
        tls=tls_context(cfg),
        probes=[m.encode() for m in cfg.probe_messages],
        matches=[a.encode() for a in cfg.probe_answers] or None,
        refusal=cfg.refusal_pattern.encode(),
        probe_timeout_ns=int(cfg.probe_timeout_ms * 1e6), deflate=cfg.deflate,
        ts_path=ts_path, seq_path=seq_path)
    drive = Drive(run, cfg, progress, stop_when)
    c = run.counters()
    kinds = {k[4:]: v for k, v in c.items() if k.startswith("err_")}
    kinds["heartbeat_failures"] = c["heartbeat_failures"]
    stalls = run.longest_stalls_ns()
    extra = {
        "threads": threads,
        "address": address,
        "connections": cfg.connections,
        "subscribe_messages": len(payloads),
        "connect_attempts": c["connect_attempts"],
        "connects": c["connects"],
        "upgrades": c["upgrades"],
        "reconnects": c["reconnects"],
        "close_frames": c["close_frames"],
        "connect_ms": _summary(run, HIST_CONNECT),
        "upgrade_ms": _summary(run, HIST_UPGRADE),
        "backoff_ms": _summary(run, HIST_BACKOFF),
        "reconnect_ms": _summary(run, HIST_OUTAGE),
        "stall_ms": _summary(run, HIST_STALL),
        "longest_stall_ms": max(stalls) / 1e6 if stalls else None,
        "payload_bytes": c["m_bytes"],
        "bytes_in": c["bytes_in"],
        "bytes_out": c["bytes_out"],
        "gaps": c["m_lost"],
        "gap_events": c["m_gap_events"],
        "seq_backwards": c["m_seq_backwards"],
        "no_timestamp": c["m_no_timestamp"],
        "clock_skew": c["m_clock_skew"],
        "fragments": c["m_fragments"],
        "pings_received": c["pings_received"],
        "pongs_sent": c["pongs_sent"],
        "pings_sent": c["pings_sent"],
        "pongs_received": c["pongs_received"],
        "clock_rule": CLOCK_RULE,
        "probes_sent": c["m_probes_sent"],
        "probe_answers": c["m_probe_answers"],
        "probe_refused": c["m_probe_refused"],
        "probe_timeouts": c["m_probe_timeouts"],
        "probe_ms": _summary(run, HIST_PROBE),
        "upgrades_refused": c["m_upgrades_refused_timed"],
        "upgrade_forbidden": c["m_upgrade_forbidden"],
        "refusal_ms": _summary(run, HIST_REFUSED),
        "deflate_negotiated": c["deflate_negotiated"],
        "deflate_missing": c["deflate_missing"],
        "compressed_messages": c["m_compressed"],
        "deflated_bytes": c["m_deflated_bytes"],
        "inflated_bytes": c["m_inflated_bytes"],
        "inflate_ns": c["m_inflate_ns"],
        "inflate_errors": c["inflate_errors"],
    }
    extra["subscribe_sent"] = c["m_sent"]
    # The distributions the HTML report draws on the nines axis.
    if cfg.probe_messages:
        extra["probe_histogram"] = Histogram.from_native(run.histogram(HIST_PROBE)).to_dict()
    if c["m_upgrades_refused_timed"]:
        extra["refusal_histogram"] = Histogram.from_native(
            run.histogram(HIST_REFUSED)).to_dict()
    # What the result's `sent` means here: messages the sequence says were
    # sent (received + missing), so success_rate and loss_rate read as
    # delivery rates.
    result = drive.result(cfg, dict(c, m_sent=c["m_received"] + c["m_lost"]), kinds, extra)
    span = result.duration_s
    extra["messages_per_s"] = result.received / span if span > 0 else 0.0
    extra["bytes_per_s"] = c["m_bytes"] / span if span > 0 else 0.0
    extra["probe_answers_per_s"] = c["m_probe_answers"] / span if span > 0 else 0.0
    if cfg.tls:
        tls = tls_summary(run, c, span, HIST_TLS)
        extra["tls"] = tls
        del drive, run          # the native run's fds go now, not with a kept traceback
        check_tls_failure(cfg, "wss", c["upgrades"], tls)
    return result

"""HTTP mode: `run_http_load` sends ``GET {prefix}{KEY}`` over HTTP/1.1 to
any server, keep-alive, pipelined, or a new connection per request."""
from __future__ import annotations

import math
import socket
import struct
from typing import Any, Optional

from beastnet.errors import LoadError, LoadTLSError
from beastnet.loadgen import _native
from beastnet.loadgen._driver import (Drive, ProgressCallback, StopWhen, ensure_fd_limit,
                                      native_args, resolve, split)
from beastnet.loadgen.config import HTTPLoadConfig
from beastnet.loadgen.histogram import Histogram
from beastnet.loadgen.result import LoadResult

__all__ = ["run_http_load"]

# The handshake-time histogram of an HTTP run (LG_HIST_TLS in _run.pxi).
HIST_TLS = 4


def _http_sockaddr(host: str, port: int) -> tuple[int, bytes, str]:
    """(family, packed struct sockaddr, printable address) of the server."""
    family, sa = resolve(host, port, socket.SOCK_STREAM)
    addr: tuple[Any, ...] = tuple(sa)
    ip = str(addr[0])
    if family == socket.AF_INET:
        packed = (struct.pack("=H", family) + struct.pack("!H", port)
                  + socket.inet_pton(family, ip) + bytes(8))
    elif family == socket.AF_INET6:
        packed = (struct.pack("=H", family) + struct.pack("!HI", port, addr[2])
                  + socket.inet_pton(family, ip) + struct.pack("=I", addr[3]))
    else:
        raise LoadError(f"{host}: unsupported address family {family}")
    return family, packed, ip


def _http_requests(cfg: HTTPLoadConfig) -> tuple[list[bytes], list[bytes]]:
    """Every key's request, pre-built once: keep-alive and closing variants."""
    host = cfg.host_header or (f"[{cfg.host}]" if ":" in cfg.host else cfg.host)
    if cfg.host_header is None and cfg.port != (443 if cfg.tls else 80):
        host = f"{host}:{cfg.port}"
    head = [f"Host: {host}"]
    if cfg.api_key is not None:
        head.append(f"X-API-Key: {cfg.api_key}")
    head += [h.strip() for h in cfg.headers]
    tail = "".join(f"{h}\r\n" for h in head)
    keep, close = [], []
    for key in cfg.keys:
        line = f"GET {cfg.path_prefix}{key} HTTP/1.1\r\n{tail}"
        keep.append((line + "\r\n").encode("latin-1"))
        close.append((line + "Connection: close\r\n\r\n").encode("latin-1"))
    return keep, close


def _summary_ms(h: Histogram) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {}
    values = h.summary()                # p50 .. p99.99 and max, as the total shows them
    values["mean"] = h.mean_ns
    for name, value in values.items():
        out[name] = None if math.isnan(value) else round(value / 1e6, 6)
    out["count"] = h.total
    return out


def run_http_load(cfg: HTTPLoadConfig, progress: Optional[ProgressCallback] = None,
                  stop_when: Optional[StopWhen] = None) -> LoadResult:
    """Run one HTTP/1.1 load test against any server and return what it measured.

    Same contract as `run_udp_load` (blocking, native threads without the GIL,
    progress once a second, `stop_when`, Ctrl-C returns the partial result).
    The result adds ``failed`` requests, ``status_codes``, and in ``extra``
    connect time, time to first byte, connection reuse rate and reconnects.
    """
    cfg.validate()
    per_conn = cfg.requests_per_connection()
    threads = min(cfg.threads, cfg.connections)
    counts = [len(range(i, cfg.connections, threads)) for i in range(threads)]
    ensure_fd_limit(cfg.connections + 2 * threads)
    family, sockaddr, address = _http_sockaddr(cfg.host, cfg.port)
    keep, close = _http_requests(cfg)
    quotas = split(cfg.max_requests, counts) if cfg.max_requests is not None else None
    if quotas is not None and min(quotas) == 0:
        keep_threads = [i for i, q in enumerate(quotas) if q > 0]
        counts = [counts[i] for i in keep_threads]
        quotas = [quotas[i] for i in keep_threads]
        threads = len(counts)
    run = _native.HTTPLoadRun(
        sockaddr, family, counts, keep, close, pipeline=cfg.pipeline, per_conn=per_conn,
        connect_timeout_ns=int(cfg.connect_timeout_ms * 1e6), quotas=quotas,
        tls=tls_context(cfg), **native_args(cfg, threads))
    drive = Drive(run, cfg, progress, stop_when)
    c = run.counters()
    kinds = {"connect_refused": c["err_connect_refused"],
             "connect_timeout": c["err_connect_timeout"],
             "connect_other": c["err_connect_other"], "reset": c["err_reset"],
             "closed": c["err_closed"], "closed_mid_response": c["err_closed_mid_response"],
             "parse": c["err_parse"], "too_large": c["err_too_large"], "io": c["err_io"],
             **tls_error_kinds(c)}
    sent = c["m_sent"]
    extra = {
        "threads": threads,
        "address": address,
        "connections": cfg.connections,
        "connects": c["connects"],
        "connect_attempts": c["connect_attempts"],
        "reconnects": max(0, c["connects"] - cfg.connections),
        "reuse_rate": (1.0 - c["m_first_requests"] / sent) if sent else None,
        "server_closes": c["server_closes"],
        "connect_ms": _summary_ms(Histogram.from_native(run.histogram(3))),
        "ttfb_ms": _summary_ms(Histogram.from_native(run.histogram(2))),
        "bytes_out": c["bytes_out"],
        "bytes_in": c["bytes_in"],
    }
    result = drive.result(cfg, c, kinds, extra, failed=c["m_failed"],
                          status_codes=run.status_codes())
    if cfg.tls:
        tls = tls_summary(run, c, result.duration_s, HIST_TLS)
        extra["tls"] = tls
        # The native run (its threads' epoll fds) goes now, not with the
        # traceback of the error below, which a caller may keep.
        del drive, run
        check_tls_failure(cfg, "https", result.received, tls)
    return result


def tls_context(cfg: Any) -> Optional[_native.TLSClientContext]:
    """The run's TLS client context (None over plain TCP); a bad --cacert
    is a `LoadError`."""
    if not cfg.tls:
        return None
    try:
        return _native.TLSClientContext(cfg.host, cafile=cfg.cacert, insecure=cfg.insecure,
                                        resume=cfg.tls_resume)
    except ValueError as exc:
        raise LoadError(str(exc)) from None


def tls_error_kinds(c: dict) -> dict[str, int]:
    """The TLS error counters by kind, as ``errors_by_kind`` names them."""
    return {"tls_verify": c["err_tls_verify"], "tls_not_tls": c["err_tls_not_tls"],
            "tls_handshake": c["err_tls_handshake"], "tls_timeout": c["err_tls_timeout"],
            "tls_protocol": c["err_tls_protocol"]}


def tls_summary(run: Any, c: dict, duration_s: float, hist: int) -> dict[str, Any]:
    """What the report shows of TLS: version and cipher, handshakes (and
    per second), resumed sessions, handshake time, the first failure."""
    info = run.thread_info()
    none: dict[str, Any] = {}
    first = next((t for t in info if t.get("tls_version")), none)
    failed = next((t for t in info if t.get("tls_fail_kind")), none)
    return {
        "version": first.get("tls_version"),
        "cipher": first.get("tls_cipher"),
        "handshakes": c["tls_handshakes"],
        "resumed": c["tls_resumed"],
        "handshakes_per_s": c["tls_handshakes"] / duration_s if duration_s > 0 else 0.0,
        "handshake_ms": _summary_ms(Histogram.from_native(run.histogram(hist))),
        "first_failure": failed.get("tls_failure") or None,
        "first_failure_kind": failed.get("tls_fail_kind", 0),
    }


# TLSF_VERIFY in _tls.pxi: the failure a --cacert or --insecure answers.
_TLSF_VERIFY = 1


def check_tls_failure(cfg: Any, scheme: str, answered: int, tls: dict[str, Any]) -> None:
    """Raise `LoadTLSError` with one line when no TLS connection ever
    worked (nothing answered and a handshake failed)."""
    if answered or not tls["first_failure"]:
        return
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    target = f"{scheme}://{host}:{cfg.port}"
    if tls["first_failure_kind"] == _TLSF_VERIFY:
        raise LoadTLSError(f"TLS certificate verification failed for {target}: "
                           f"{tls['first_failure']} (use --cacert FILE or --insecure)")
    raise LoadTLSError(f"TLS failed for {target}: {tls['first_failure']}")

"""UDP mode: `run_udp_load` sends `@TAG KEY[ APIKEY]` over many connected
sockets, closed loop (a window of outstanding requests per socket) or open
loop (a target rate, latency from the intended send time)."""
from __future__ import annotations

import socket
from typing import Any, Optional, Sequence

from beastnet.errors import LoadError
from beastnet.loadgen import _native
from beastnet.loadgen._driver import (Drive, ProgressCallback, StopWhen, ensure_fd_limit,
                                      native_args, resolve, split)
from beastnet.loadgen.config import UDPLoadConfig, to_bytes
from beastnet.loadgen.result import LoadResult
from beastnet.loadgen.verdict import UDP_COUNTED_NAMES

__all__ = ["run_udp_load"]

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
RECV_BUFFER_BYTES = 4 * 1024 * 1024
SEND_BUFFER_BYTES = 1024 * 1024
GSO_MIN_TAG_DIGITS = 10         # 2^40 requests per socket before a tag would not fit


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, nbytes: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, nbytes)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, nbytes)
        except OSError:
            pass


def _next_pow2(n: int) -> int:
    return 1 << max(1, (int(n) - 1).bit_length())


def _plan_udp(cfg: UDPLoadConfig) -> dict[str, Any]:
    threads = min(cfg.threads, cfg.sockets)
    groups = [list(range(i, cfg.sockets, threads)) for i in range(threads)]
    if cfg.rate is not None:
        per_socket = cfg.rate / cfg.sockets
        interval_ns = 1e9 / per_socket
        # Open loop sends whatever the replies: a socket may have up to
        # rate x timeout requests in flight before timeouts free slots.  Twice
        # that (Poisson bursts) and never fewer than the window would need.
        inflight = per_socket * cfg.timeout_ms / 1e3
        slots = _next_pow2(int(max(2 * cfg.window, 2 * inflight + 2 * cfg.batch, 64)))
    else:
        interval_ns = 0.0
        slots = _next_pow2(max(2 * cfg.window, 4))
    slots = min(slots, 1 << 22)
    quotas = None
    if cfg.max_requests is not None:
        quotas = split(cfg.max_requests, [len(g) for g in groups])
        if min(quotas) == 0:            # fewer requests than threads: idle threads get none
            keep = [i for i, q in enumerate(quotas) if q > 0]
            groups = [sum((groups[i] for i in range(threads) if i % len(keep) == k), [])
                      for k in range(len(keep))]
            quotas = [quotas[i] for i in keep]
            threads = len(groups)
    return {"threads": threads, "groups": groups, "interval_ns": interval_ns,
            "slots": slots, "quotas": quotas}


def _open_udp_sockets(cfg: UDPLoadConfig) -> list[socket.socket]:
    family, sockaddr = resolve(cfg.host, cfg.port, socket.SOCK_DGRAM)
    socks: list[socket.socket] = []
    try:
        for _ in range(cfg.sockets):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setblocking(False)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            # connect(): the kernel filters replies to this peer, picks a
            # distinct source port, and reports ICMP refusals as ECONNREFUSED.
            sock.connect(sockaddr)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise LoadError(f"UDP socket to {cfg.host}:{cfg.port}: {exc}") from exc
    return socks


def _payloads(keys: Sequence[str], api_key: Optional[str]) -> list[bytes]:
    suffix = b" " + to_bytes(api_key) if api_key is not None else b""
    return [to_bytes(k) + suffix for k in keys]


def _gso_tag_digits(payloads: Sequence[bytes]) -> Optional[list[int]]:
    """Tag widths that give every request the same size (UDP GSO needs
    equal datagrams): zero-padded hex, 10..16 digits.  None when the keys'
    lengths differ too much to pad within 16 digits."""
    lengths = [len(p) for p in payloads]
    longest = max(lengths)
    if longest - min(lengths) > 16 - GSO_MIN_TAG_DIGITS:
        return None
    return [GSO_MIN_TAG_DIGITS + longest - n for n in lengths]


def run_udp_load(cfg: UDPLoadConfig, progress: Optional[ProgressCallback] = None,
                 stop_when: Optional[StopWhen] = None) -> LoadResult:
    """Run one UDP load test and return what it measured.

    Blocks for about warmup_s + duration_s (+ up to one timeout to settle the
    last requests).  The generator threads never hold the GIL.  `progress`,
    when given, is called once a second with the timeline row just measured;
    when `stop_when(row)` returns true the run stops early (``extra["stopped_early"]``).
    Ctrl-C stops the run early and returns the partial result
    (``interrupted=True``); a second Ctrl-C abandons requests in flight.
    """
    cfg.validate()
    plan = _plan_udp(cfg)
    ensure_fd_limit(cfg.sockets + 2 * plan["threads"])
    socks = _open_udp_sockets(cfg)
    args = native_args(cfg, plan["threads"])
    args["interval_ns"] = plan["interval_ns"]       # UDP schedules each socket on its own
    payloads = _payloads(cfg.keys, cfg.api_key)
    gso = _gso_tag_digits(payloads) if cfg.gso and _native.PLATFORM_LINUX else None
    try:
        run = _native.UDPLoadRun(
            [[socks[i].fileno() for i in group] for group in plan["groups"]], payloads,
            gso_tag_digits=gso, window=cfg.window, batch=cfg.batch,
            slots_per_socket=plan["slots"], quotas=plan["quotas"], **args)
        drive = Drive(run, cfg, progress, stop_when)
    finally:
        for sock in socks:
            sock.close()
    c = run.counters()
    info = run.thread_info()
    errors_by_kind = {"refused": c["err_refused"], "nobufs": c["err_nobufs"],
                      "send_other": c["err_send"], "recv_other": c["err_recv"]}
    extra = {
        "threads": plan["threads"],
        "slots_per_socket": plan["slots"],
        "rx_batches": c["rx_batches"],
        "tx_batches": c["tx_batches"],
        "eintr": c["eintr"],
        "gso": all(t["gso"] for t in info),
    }
    bodies = {name: c["m_err_" + name] for name in UDP_COUNTED_NAMES}
    bodies["other"] = c["m_error_replies"] - sum(bodies.values())
    return drive.result(cfg, c, errors_by_kind, extra, late=c["late"], unmatched=c["unmatched"],
                        bad_replies=c["bad_replies"],
                        error_bodies={k: v for k, v in bodies.items() if v})

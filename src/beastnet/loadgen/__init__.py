"""beastnet's load generator: native threads that drive a server without the GIL.

UDP mode (`run_udp_load`) sends `@TAG KEY[ APIKEY]` over many connected
sockets, closed loop (a window of outstanding requests per socket) or open
loop (a target rate, latency from the intended send time).  The numbers it
returns are meant to be true: see DESIGN.md §7 and `docs/loadgen.md`.

    from beastnet.loadgen import UDPLoadConfig, run_udp_load
    result = run_udp_load(UDPLoadConfig(port=9000, keys=["BTC"], duration_s=3))
    print(result.rps, result.latency_ns["p99"])
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import resource
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from beastnet import _core
from beastnet.errors import LoadConfigError, LoadError
from beastnet.loadgen.histogram import Histogram

__all__ = [
    "HTTPLoadConfig",
    "Histogram",
    "LoadResult",
    "UDPLoadConfig",
    "level_config",
    "machine_info",
    "http_level_config",
    "run_http_load",
    "run_udp_load",
    "udp_level_config",
]

# Loop modes, as _load.pxi numbers them.
_MODE_CLOSED, _MODE_OPEN_CONSTANT, _MODE_OPEN_POISSON = 0, 1, 2

_KEY_RE = re.compile(rb"^[A-Za-z0-9._:/-]{1,64}$")
_APIKEY_RE = re.compile(rb"^[\x21-\x7e]{1,64}$")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
RECV_BUFFER_BYTES = 4 * 1024 * 1024
SEND_BUFFER_BYTES = 1024 * 1024
FD_SPARE = 64                   # descriptors left for everything else in the process

ProgressCallback = Callable[[dict], None]


# -- configuration ------------------------------------------------------------------


@dataclass
class UDPLoadConfig:
    """What a UDP load run does.

    Closed loop (``rate=None``): every socket keeps ``window`` requests
    outstanding.  Open loop (``rate=N``): N requests/s in total, evenly spaced
    or Poisson (``poisson=True``), sent whatever the replies; latency runs from
    each request's intended send time.  ``warmup_s`` is excluded from every
    result.  The run stops after ``duration_s`` of measurement, or once
    ``max_requests`` measured requests are sent and settled, whichever is first.
    """

    host: str = "127.0.0.1"
    port: int = 9000
    keys: Sequence[str] = ("BTC",)
    weights: Optional[Sequence[float]] = None
    sockets: int = 64
    threads: int = 2
    window: int = 32
    rate: Optional[float] = None
    poisson: bool = False
    duration_s: float = 5.0
    warmup_s: float = 1.0
    timeout_ms: float = 200
    batch: int = 32
    pin_threads: bool = False
    api_key: Optional[str] = None
    max_requests: Optional[int] = None
    seed: Optional[int] = None
    gso: bool = True

    def validate(self) -> None:
        """Raise `LoadConfigError` naming the first bad setting."""
        _validate_common(self, ("sockets", "threads", "window", "batch"))
        if self.batch > 1024:
            _bad(f"batch must be <= 1024, got {self.batch}")
        if self.window > 1 << 20:
            _bad(f"window must be <= {1 << 20}, got {self.window}")

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def to_dict(self) -> dict[str, Any]:
        return _config_dict(self, "udp")


def _to_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _bad(msg: str) -> None:
    raise LoadConfigError(msg)


def _validate_common(cfg: Any, counts: Sequence[str]) -> None:
    """The settings UDP and HTTP configs share; `counts` name positive ints."""
    if not isinstance(cfg.port, int) or not 0 < cfg.port < 65536:
        _bad(f"port must be 1..65535, got {cfg.port!r}")
    if not cfg.keys:
        _bad("keys must name at least one key")
    for key in cfg.keys:
        if not _KEY_RE.match(_to_bytes(key)):
            _bad(f"invalid key {key!r}: 1-64 bytes of [A-Za-z0-9._:/-]")
    if cfg.api_key is not None and not _APIKEY_RE.match(_to_bytes(cfg.api_key)):
        _bad("api_key must be 1-64 printable non-space bytes")
    if cfg.weights is not None:
        if len(cfg.weights) != len(cfg.keys):
            _bad(f"{len(cfg.weights)} weights for {len(cfg.keys)} keys")
        if any(not math.isfinite(w) or w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0:
            _bad("weights must be finite, >= 0, and not all zero")
    for name in counts:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _bad(f"{name} must be a positive integer, got {value!r}")
    if not _positive(cfg.duration_s):
        _bad(f"duration_s must be > 0, got {cfg.duration_s!r}")
    if not (_finite(cfg.warmup_s) and cfg.warmup_s >= 0):
        _bad(f"warmup_s must be >= 0, got {cfg.warmup_s!r}")
    if not _positive(cfg.timeout_ms):
        _bad(f"timeout_ms must be > 0, got {cfg.timeout_ms!r}")
    if cfg.rate is not None and not _positive(cfg.rate):
        _bad(f"rate must be > 0 requests/s, got {cfg.rate!r}")
    if cfg.poisson and cfg.rate is None:
        _bad("poisson arrivals need a rate (open loop)")
    if cfg.max_requests is not None and (not isinstance(cfg.max_requests, int)
                                         or cfg.max_requests < 1):
        _bad(f"max_requests must be a positive integer, got {cfg.max_requests!r}")


def _config_dict(cfg: Any, mode: str) -> dict[str, Any]:
    """A config as the JSON report shows it (long key lists and the API key elided)."""
    out = asdict(cfg)
    out["keys"] = list(cfg.keys) if len(cfg.keys) <= 100 else f"{len(cfg.keys)} keys"
    out["weights"] = None if cfg.weights is None else (
        list(cfg.weights) if len(cfg.weights) <= 100 else "...")
    out["api_key"] = None if cfg.api_key is None else "***"
    out["mode"] = mode
    out["loop"] = ("open-poisson" if cfg.poisson else "open") if cfg.rate is not None else "closed"
    return out


# -- result ---------------------------------------------------------------------------


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
    whose status is >= 400 (included in ``received``).  Open loop:
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
        "beastnet_debug_build": bool(_core.DEBUG_BUILD),
    }


# -- helpers shared by the modes -----------------------------------------------------


def ensure_fd_limit(needed: int) -> None:
    """Make room for `needed` more descriptors: raise the soft RLIMIT_NOFILE
    (up to the hard limit) if that is enough, else raise `LoadError` before
    anything starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    want = in_use + needed + FD_SPARE
    if soft != resource.RLIM_INFINITY and want > soft:
        if hard != resource.RLIM_INFINITY and want > hard:
            raise LoadError(
                f"{needed} sockets need {want} file descriptors but RLIMIT_NOFILE allows "
                f"{hard} (hard limit; soft {soft}); use fewer sockets/connections or raise "
                f"the limit (ulimit -n)")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            raise LoadError(f"setrlimit RLIMIT_NOFILE to {want}: {exc}") from exc


def alias_table(weights: Sequence[float]) -> tuple[list[int], list[int]]:
    """Walker/Vose alias table: pick i uniformly, keep it when 32 random bits
    fall below prob[i] (scaled to 2^32), else take alias[i].  O(1) per draw."""
    n = len(weights)
    total = float(sum(weights))
    scaled = [w * n / total for w in weights]
    prob = [0.0] * n
    alias = list(range(n))
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    for i in small + large:
        prob[i] = 1.0
    scale = float(1 << 32)
    return [min(int(p * scale), (1 << 32) - 1) if p < 1.0 else (1 << 32) - 1 for p in prob], alias


def _resolve_udp(host: str, port: int) -> tuple[int, tuple]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise LoadError(f"getaddrinfo {host}:{port}: {exc.strerror}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


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


def _split(total: int, parts: Sequence[int]) -> list[int]:
    """`total` split in proportion to `parts`, summing exactly to `total`."""
    whole = sum(parts)
    shares = [total * p // whole for p in parts]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares


class _Sampler:
    """Per-second timeline rows from deltas of the run's cumulative counters."""

    def __init__(self, run: Any, warmup_s: float) -> None:
        self.run = run
        self.warmup_s = warmup_s
        self.t0 = time.monotonic()
        self.last_t = self.t0
        self.last_counts = run.counters()
        self.last_hist = Histogram.from_native(run.histogram(1))
        self.rows: list[dict] = []

    def sample(self) -> dict:
        now = time.monotonic()
        counts = self.run.counters()
        hist = Histogram.from_native(self.run.histogram(1))
        delta = hist - self.last_hist
        span = max(now - self.last_t, 1e-9)
        p50, p99 = delta.percentile(50), delta.percentile(99)
        row = {
            "t": round(now - self.t0, 3),
            "span_s": round(span, 3),
            "warmup": now - self.t0 <= self.warmup_s,
            "sent": counts["t_sent"] - self.last_counts["t_sent"],
            "received": counts["t_received"] - self.last_counts["t_received"],
            "lost": counts["t_lost"] - self.last_counts["t_lost"],
            "p50_ns": None if math.isnan(p50) else p50,
            "p99_ns": None if math.isnan(p99) else p99,
        }
        row["rps"] = row["received"] / span
        self.rows.append(row)
        self.last_t, self.last_counts, self.last_hist = now, counts, hist
        return row


# -- UDP mode -----------------------------------------------------------------------


def _plan_udp(cfg: UDPLoadConfig) -> dict[str, Any]:
    threads = min(cfg.threads, cfg.sockets)
    groups = [list(range(i, cfg.sockets, threads)) for i in range(threads)]
    if cfg.open_loop:
        assert cfg.rate is not None                 # open_loop means a rate was given
        per_socket = cfg.rate / cfg.sockets
        interval_ns = 1e9 / per_socket
        # Open loop sends whatever the replies: a socket may have up to
        # rate x timeout requests in flight before timeouts free slots.  Twice
        # that (Poisson bursts) and never fewer than the window would need.
        inflight = per_socket * cfg.timeout_ms / 1e3
        slots = _next_pow2(int(max(2 * cfg.window, 2 * inflight + 2 * cfg.batch, 64)))
        mode = _MODE_OPEN_POISSON if cfg.poisson else _MODE_OPEN_CONSTANT
    else:
        interval_ns = 0.0
        slots = _next_pow2(max(2 * cfg.window, 4))
        mode = _MODE_CLOSED
    slots = min(slots, 1 << 22)
    quotas = None
    if cfg.max_requests is not None:
        quotas = _split(cfg.max_requests, [len(g) for g in groups])
        if min(quotas) == 0:            # fewer requests than threads: idle threads get none
            keep = [i for i, q in enumerate(quotas) if q > 0]
            groups = [sum((groups[i] for i in range(threads) if i % len(keep) == k), [])
                      for k in range(len(keep))]
            quotas = [quotas[i] for i in keep]
            threads = len(groups)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = [i % (ncpu or 1) for i in range(threads)] if cfg.pin_threads else None
    return {"threads": threads, "groups": groups, "mode": mode, "interval_ns": interval_ns,
            "slots": slots, "quotas": quotas, "cpus": cpus}


def _open_udp_sockets(cfg: UDPLoadConfig) -> list[socket.socket]:
    family, sockaddr = _resolve_udp(cfg.host, cfg.port)
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
    suffix = b" " + _to_bytes(api_key) if api_key is not None else b""
    return [_to_bytes(k) + suffix for k in keys]


GSO_MIN_TAG_DIGITS = 10         # 2^40 requests per socket before a tag would not fit


def _gso_tag_digits(payloads: Sequence[bytes]) -> Optional[list[int]]:
    """Tag widths that give every request the same size (UDP GSO needs
    equal datagrams): zero-padded hex, 10..16 digits.  None when the keys'
    lengths differ too much to pad within 16 digits."""
    lengths = [len(p) for p in payloads]
    longest = max(lengths)
    if longest - min(lengths) > 16 - GSO_MIN_TAG_DIGITS:
        return None
    return [GSO_MIN_TAG_DIGITS + longest - n for n in lengths]


def udp_level_config(base: UDPLoadConfig, requests: int, concurrency: int,
                     max_seconds: float = 60.0) -> UDPLoadConfig:
    """The closed-loop config of one ramp level: `concurrency` outstanding
    requests (the most sockets up to base.sockets that divide it exactly,
    times the window), `requests` measured requests, no warm-up, and at most
    `max_seconds`."""
    sockets = max(s for s in range(1, min(base.sockets, concurrency) + 1) if concurrency % s == 0)
    return dataclasses.replace(base, sockets=sockets, window=concurrency // sockets, rate=None,
                               poisson=False, max_requests=requests, warmup_s=0.0,
                               duration_s=max_seconds)


def level_config(base: Any, requests: int, concurrency: int, max_seconds: float = 60.0) -> Any:
    """One ramp level's config for either mode (see udp_level_config / http_level_config)."""
    if isinstance(base, UDPLoadConfig):
        return udp_level_config(base, requests, concurrency, max_seconds)
    return http_level_config(base, requests, concurrency, max_seconds)


def run_udp_load(cfg: UDPLoadConfig, progress: Optional[ProgressCallback] = None,
                 stop_when: Optional[Callable[[dict], bool]] = None) -> LoadResult:
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
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little")
    alias = alias_table(cfg.weights) if cfg.weights is not None else None
    payloads = _payloads(cfg.keys, cfg.api_key)
    gso = _gso_tag_digits(payloads) if cfg.gso and _core.PLATFORM_LINUX else None
    try:
        run = _core.UDPLoadRun(
            [[socks[i].fileno() for i in group] for group in plan["groups"]],
            payloads, alias, gso_tag_digits=gso,
            mode=plan["mode"], window=cfg.window, batch=cfg.batch,
            slots_per_socket=plan["slots"], interval_ns=plan["interval_ns"],
            timeout_ns=int(cfg.timeout_ms * 1e6), warmup_ns=int(cfg.warmup_s * 1e9),
            duration_ns=max(1, int(cfg.duration_s * 1e9)), quotas=plan["quotas"],
            cpus=plan["cpus"], seed=(seed | 1) & 0xFFFFFFFFFFFFFFFF)
        started_at = time.time()
        run.start()
        interrupted, stopped, sampler = _wait(run, cfg, progress, stop_when)
        run.join()
    finally:
        for sock in socks:
            sock.close()
    result = _udp_result(cfg, plan, run, sampler, interrupted, started_at)
    result.extra["stopped_early"] = stopped
    return result


def _wait(run: Any, cfg: Any, progress: Optional[ProgressCallback],
          stop_when: Optional[Callable[[dict], bool]]) -> tuple[bool, bool, _Sampler]:
    """Sample the timeline once a second until the threads finish; handle Ctrl-C.
    Returns (interrupted, stopped by `stop_when`, the sampler holding the timeline)."""
    sampler = _Sampler(run, cfg.warmup_s)
    # Hard bound: a run never outlives its schedule by more than this, even if
    # a thread misbehaves.
    limit = sampler.t0 + cfg.warmup_s + cfg.duration_s + cfg.timeout_ms / 1e3 + 10.0
    next_sample = sampler.t0 + 1.0
    interrupted = stopped = False
    try:
        while not run.finished():
            now = time.monotonic()
            if now >= next_sample:
                row = sampler.sample()
                next_sample += 1.0
                if progress is not None:
                    progress(row)
                if stop_when is not None and not stopped and not row["warmup"] and stop_when(row):
                    stopped = True
                    run.stop()
            if now > limit:
                run.stop(abort=True)
                break
            # The threads need nothing from us: wake 10x a second to check.
            time.sleep(min(0.1, max(0.0, next_sample - now)))
    except KeyboardInterrupt:
        interrupted = True
        run.stop()
        try:
            while not run.finished():
                time.sleep(0.01)
        except KeyboardInterrupt:
            run.stop(abort=True)
    if time.monotonic() - sampler.last_t > 0.05:
        sampler.sample()                # the last partial second
    return interrupted, stopped, sampler


def _measured_seconds(cfg: Any, info: list[dict]) -> float:
    """The measured window, from the threads' own clocks; raises `LoadError`
    if a thread stopped on a fatal error."""
    fatal = [os.strerror(t["fatal_errno"]) for t in info if t["fatal_errno"]]
    if fatal:
        raise LoadError(f"generator thread failed: {fatal[0]}")
    if cfg.max_requests is not None:
        # A request count: the run lasts until the last reply (or send).
        end_ns = max(max(t["send_stop_ns"], t["last_reply_ns"]) for t in info)
    else:
        end_ns = max(t["send_stop_ns"] for t in info)
    return max(end_ns - int(cfg.warmup_s * 1e9), 0) / 1e9


def _udp_result(cfg: UDPLoadConfig, plan: dict, run: Any, sampler: _Sampler,
                interrupted: bool, started_at: float) -> LoadResult:
    c = run.counters()
    info = run.thread_info()
    duration_s = _measured_seconds(cfg, info)
    errors_by_kind = {"refused": c["err_refused"], "nobufs": c["err_nobufs"],
                      "send_other": c["err_send"], "recv_other": c["err_recv"]}
    errors_by_kind = {k: v for k, v in errors_by_kind.items() if v}
    extra = {
        "threads": plan["threads"],
        "slots_per_socket": plan["slots"],
        "pin_errors": [os.strerror(t["pin_error"]) for t in info if t["pin_error"]],
        "rx_batches": c["rx_batches"],
        "tx_batches": c["tx_batches"],
        "waits": c["waits"],
        "eintr": c["eintr"],
        "per_thread_cpu_s": [t["cpu_ns"] / 1e9 for t in info],
        "gso": all(t["gso"] for t in info),
    }
    return LoadResult(
        mode="udp", config=cfg.to_dict(), sent=c["m_sent"], received=c["m_received"],
        lost=c["m_lost"], late=c["late"], errors=sum(errors_by_kind.values()),
        unmatched=c["unmatched"], bad_replies=c["bad_replies"],
        error_replies=c["m_error_replies"], unsent=c["m_unsent"],
        errors_by_kind=errors_by_kind, duration_s=duration_s,
        cpu_s=sum(t["cpu_ns"] for t in info) / 1e9, timeline=sampler.rows,
        histogram=Histogram.from_native(run.histogram(0)), interrupted=interrupted,
        started_at=started_at, extra=extra)


# -- HTTP mode ----------------------------------------------------------------------


@dataclass
class HTTPLoadConfig:
    """What an HTTP/1.1 load run does: ``GET {path_prefix}{KEY}`` over
    ``connections`` connections with up to ``pipeline`` requests in flight on
    each (closed loop), or ``rate`` requests/s in total (open loop).

    ``conn_mode``: ``"keepalive"`` (default) reuses connections for as long as
    the server keeps them; ``"close"`` opens a new connection per request (the
    latency then includes the connect); an integer N sends N requests per
    connection, the last with ``Connection: close``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    keys: Sequence[str] = ("BTC",)
    weights: Optional[Sequence[float]] = None
    connections: int = 64
    threads: int = 2
    pipeline: int = 1
    conn_mode: Any = "keepalive"
    path_prefix: str = "/v1/"
    headers: Sequence[str] = ()
    host_header: Optional[str] = None
    rate: Optional[float] = None
    poisson: bool = False
    duration_s: float = 5.0
    warmup_s: float = 1.0
    timeout_ms: float = 1000
    connect_timeout_ms: float = 1000
    pin_threads: bool = False
    api_key: Optional[str] = None
    max_requests: Optional[int] = None
    seed: Optional[int] = None

    def validate(self) -> None:
        """Raise `LoadConfigError` naming the first bad setting."""
        _validate_common(self, ("connections", "threads", "pipeline"))
        if self.pipeline > 4096:
            _bad(f"pipeline must be <= 4096, got {self.pipeline}")
        self.requests_per_connection()
        if not self.path_prefix.startswith("/") or any(c in self.path_prefix for c in " \r\n"):
            _bad(f"path_prefix must start with '/' and hold no spaces, got {self.path_prefix!r}")
        for h in self.headers:
            if ":" not in h or "\n" in h or "\r" in h:
                _bad(f"header {h!r}: expected 'Name: value'")
        if not _positive(self.connect_timeout_ms):
            _bad(f"connect_timeout_ms must be > 0, got {self.connect_timeout_ms!r}")

    def requests_per_connection(self) -> int:
        """0 = keep-alive, 1 = a new connection per request, N = N per connection."""
        mode = self.conn_mode
        if mode in ("keepalive", "keep-alive", None):
            return 0
        if mode in ("close", "new", "per-request"):
            return 1
        try:
            n = int(mode)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise LoadConfigError(f"conn_mode must be 'keepalive', 'close' or a positive "
                                  f"number of requests per connection, got {mode!r}")
        return n

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def to_dict(self) -> dict[str, Any]:
        out = _config_dict(self, "http")
        out["headers"] = list(self.headers)
        return out


def http_level_config(base: HTTPLoadConfig, requests: int, concurrency: int,
                      max_seconds: float = 60.0) -> HTTPLoadConfig:
    """One ramp level over HTTP: `concurrency` requests in flight, as the
    most connections up to base.connections that divide it times the
    pipeline depth (keep-alive), or one connection each (other modes)."""
    if base.requests_per_connection() == 0:
        conns = max(c for c in range(1, min(base.connections, concurrency) + 1)
                    if concurrency % c == 0)
        pipeline = concurrency // conns
    else:
        conns, pipeline = concurrency, 1
    return dataclasses.replace(base, connections=conns, pipeline=pipeline, rate=None,
                               poisson=False, max_requests=requests, warmup_s=0.0,
                               duration_s=max_seconds)


def _http_sockaddr(host: str, port: int) -> tuple[int, bytes, str]:
    """(family, packed struct sockaddr, printable address) of the server."""
    import struct
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LoadError(f"getaddrinfo {host}:{port}: {exc.strerror}") from exc
    family, _, _, _, sa = infos[0]
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
    if cfg.host_header is None and cfg.port != 80:
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
    out = {}
    for name, value in (("p50", h.percentile(50)), ("p90", h.percentile(90)),
                        ("p99", h.percentile(99)), ("max", float(h.max_ns) if h.total else math.nan),
                        ("mean", h.mean_ns)):
        out[name] = None if math.isnan(value) else round(value / 1e6, 6)
    out["count"] = h.total
    return out


def run_http_load(cfg: HTTPLoadConfig, progress: Optional[ProgressCallback] = None,
                  stop_when: Optional[Callable[[dict], bool]] = None) -> LoadResult:
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
    quotas = _split(cfg.max_requests, counts) if cfg.max_requests is not None else None
    if quotas is not None and min(quotas) == 0:
        keep_threads = [i for i, q in enumerate(quotas) if q > 0]
        counts = [counts[i] for i in keep_threads]
        quotas = [quotas[i] for i in keep_threads]
        threads = len(counts)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = [i % (ncpu or 1) for i in range(threads)] if cfg.pin_threads else None
    mode = _MODE_CLOSED
    interval_ns = 0.0
    if cfg.open_loop:
        assert cfg.rate is not None                 # open_loop means a rate was given
        mode = _MODE_OPEN_POISSON if cfg.poisson else _MODE_OPEN_CONSTANT
        interval_ns = 1e9 / cfg.rate
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little")
    run = _core.HTTPLoadRun(
        sockaddr, family, counts, keep, close,
        alias_table(cfg.weights) if cfg.weights is not None else None,
        mode=mode, pipeline=cfg.pipeline, per_conn=per_conn, interval_ns=interval_ns,
        timeout_ns=int(cfg.timeout_ms * 1e6), connect_timeout_ns=int(cfg.connect_timeout_ms * 1e6),
        warmup_ns=int(cfg.warmup_s * 1e9), duration_ns=max(1, int(cfg.duration_s * 1e9)),
        quotas=quotas, cpus=cpus, seed=(seed | 1) & 0xFFFFFFFFFFFFFFFF)
    started_at = time.time()
    run.start()
    try:
        interrupted, stopped, sampler = _wait(run, cfg, progress, stop_when)
    finally:
        run.join()
    c = run.counters()
    info = run.thread_info()
    duration_s = _measured_seconds(cfg, info)
    kinds = {"connect_refused": c["err_connect_refused"], "connect_timeout": c["err_connect_timeout"],
             "connect_other": c["err_connect_other"], "reset": c["err_reset"],
             "closed": c["err_closed"], "closed_mid_response": c["err_closed_mid_response"],
             "parse": c["err_parse"], "too_large": c["err_too_large"], "io": c["err_io"]}
    kinds = {k: v for k, v in kinds.items() if v}
    ttfb = Histogram.from_native(run.histogram(2))
    connect = Histogram.from_native(run.histogram(3))
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
        "connect_ms": _summary_ms(connect),
        "ttfb_ms": _summary_ms(ttfb),
        "bytes_out": c["bytes_out"],
        "bytes_in": c["bytes_in"],
        "waits": c["waits"],
        "pin_errors": [os.strerror(t["pin_error"]) for t in info if t["pin_error"]],
        "per_thread_cpu_s": [t["cpu_ns"] / 1e9 for t in info],
        "stopped_early": stopped,
    }
    return LoadResult(
        mode="http", config=cfg.to_dict(), sent=sent, received=c["m_received"], lost=c["m_lost"],
        failed=c["m_failed"], errors=sum(kinds.values()), error_replies=c["m_error_replies"],
        unsent=c["m_unsent"], errors_by_kind=kinds, status_codes=run.status_codes(),
        duration_s=duration_s, cpu_s=sum(t["cpu_ns"] for t in info) / 1e9,
        timeline=sampler.rows, histogram=Histogram.from_native(run.histogram(0)),
        interrupted=interrupted, started_at=started_at, extra=extra)

"""What the UDP and HTTP modes share around the native run: descriptor
limits, the key mix, splitting a request count over threads, the wait loop
that samples the per-second timeline and handles Ctrl-C, and the assembly of
a `LoadResult` from the run's counters.
"""
from __future__ import annotations

import math
import os
import resource
import socket
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional, Sequence

from beastnet.errors import LoadError
from beastnet.loadgen.config import LoadConfig
from beastnet.loadgen.histogram import Histogram
from beastnet.loadgen.result import LoadResult

__all__ = ["alias_table", "ensure_fd_limit"]

# Loop modes, as _run.pxi numbers them.
MODE_CLOSED, MODE_OPEN_CONSTANT, MODE_OPEN_POISSON = 0, 1, 2

FD_SPARE = 64                   # descriptors left for everything else in the process

ProgressCallback = Callable[[dict], None]
StopWhen = Callable[[dict], bool]
#: Called with each timeline row and the latency histogram of that row alone.
SampleObserver = Callable[[dict, Histogram], None]

# Who else wants every row with its histogram: a load agent streams both to
# its coordinator.  A context variable rather than a runner argument, so every
# kind of runner (UDP, HTTP, WS) offers it without a parameter of its own.
_sample_observer: ContextVar[Optional[SampleObserver]] = ContextVar(
    "beastnet_sample_observer", default=None)


@contextmanager
def observe_samples(observer: SampleObserver) -> Iterator[None]:
    """Within the block, every run's `Sampler` calls `observer(row, delta)`
    once a second, after the row is made and before `progress` sees it."""
    token = _sample_observer.set(observer)
    try:
        yield
    finally:
        _sample_observer.reset(token)


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


def resolve(host: str, port: int, socktype: int) -> tuple[int, tuple]:
    """(family, sockaddr) of the server's first address; `LoadError` if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype)
    except socket.gaierror as exc:
        raise LoadError(f"getaddrinfo {host}:{port}: {exc.strerror}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


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


def split(total: int, parts: Sequence[int]) -> list[int]:
    """`total` split in proportion to `parts`, summing exactly to `total`."""
    whole = sum(parts)
    shares = [total * p // whole for p in parts]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares


def native_args(cfg: LoadConfig, threads: int) -> dict[str, Any]:
    """The keyword arguments every native run takes from the config alike:
    the key mix, loop mode, timings, CPU pinning and the seed.  The open-loop
    interval is the whole run's gap between requests."""
    mode, interval_ns = MODE_CLOSED, 0.0
    if cfg.rate is not None:
        mode = MODE_OPEN_POISSON if cfg.poisson else MODE_OPEN_CONSTANT
        interval_ns = 1e9 / cfg.rate
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little")
    return {
        "alias": alias_table(cfg.weights) if cfg.weights is not None else None,
        "mode": mode,
        "interval_ns": interval_ns,
        "timeout_ns": int(cfg.timeout_ms * 1e6),
        "warmup_ns": int(cfg.warmup_s * 1e9),
        "duration_ns": max(1, int(cfg.duration_s * 1e9)),
        "cpus": [i % (ncpu or 1) for i in range(threads)] if cfg.pin_threads else None,
        "seed": (seed | 1) & 0xFFFFFFFFFFFFFFFF,
    }


class Sampler:
    """Per-second timeline rows from deltas of the run's cumulative counters."""

    def __init__(self, run: Any, warmup_s: float) -> None:
        self.run = run
        self.warmup_s = warmup_s
        self.t0 = time.monotonic()
        self.last_t = self.t0
        self.last_counts = run.counters()
        self.last_hist = Histogram.from_native(run.histogram(1))
        self.rows: list[dict] = []
        self.observer = _sample_observer.get()

    def unsampled(self) -> bool:
        """Whether requests were sent or answered since the last row."""
        counts = self.run.counters()
        return any(counts[k] != self.last_counts[k] for k in ("t_sent", "t_received", "t_lost"))

    def sample(self) -> dict:
        """One row: what happened since the last one.  ``t`` is the row's end
        and ``t_start`` its start (seconds since the run began); counts are
        per row, ``rps`` and the other ``*_per_s`` are rates over its span,
        so a partial last second reads as a rate, not a collapse.  A row is
        ``warmup`` when it began inside the warm-up."""
        now = time.monotonic()
        counts = self.run.counters()
        hist = Histogram.from_native(self.run.histogram(1))
        delta = hist - self.last_hist
        span = max(now - self.last_t, 1e-9)
        p50, p99, top = delta.percentile(50), delta.percentile(99), delta.percentile(100)
        last = self.last_counts
        errors = sum(v - last[k] for k, v in counts.items() if k.startswith("err_"))
        row = {
            "t": round(now - self.t0, 3),
            "t_start": round(self.last_t - self.t0, 3),
            "span_s": round(span, 3),
            # A few ms of slack: the first row ends at the warm-up's end.
            "warmup": self.last_t - self.t0 < self.warmup_s - 0.005,
            "partial": span < 0.95,
            "sent": counts["t_sent"] - last["t_sent"],
            "received": counts["t_received"] - last["t_received"],
            "lost": counts["t_lost"] - last["t_lost"],
            "error_replies": counts["m_error_replies"] - last["m_error_replies"],
            "errors": errors,
            "p50_ns": None if math.isnan(p50) else p50,
            "p99_ns": None if math.isnan(p99) else p99,
            "max_ns": None if math.isnan(top) else top,
        }
        row["rps"] = row["received"] / span
        for name in ("sent", "lost", "error_replies", "errors"):
            row[name + "_per_s"] = row[name] / span
        self.rows.append(row)
        self.last_t, self.last_counts, self.last_hist = now, counts, hist
        if self.observer is not None:
            self.observer(row, delta)
        return row


class Drive:
    """One native run from start() to join(): the timeline, whether Ctrl-C
    or `stop_when` ended it early, and when it began (wall clock)."""

    def __init__(self, run: Any, cfg: LoadConfig, progress: Optional[ProgressCallback],
                 stop_when: Optional[StopWhen]) -> None:
        self.run = run
        self.started_at = time.time()
        # The baseline before the threads start, so the timeline adds up to
        # every request of the run.
        sampler = Sampler(run, cfg.warmup_s)
        run.start()
        try:
            self.interrupted, self.stopped, self.sampler = _wait(run, cfg, progress, stop_when,
                                                                 sampler)
        finally:
            run.join()

    def result(self, cfg: LoadConfig, counters: dict, errors_by_kind: dict[str, int],
               extra: dict[str, Any], **fields: Any) -> LoadResult:
        """The run's `LoadResult`: the fields every protocol fills alike from
        the thread info and histograms, plus `fields` and `extra`.  Raises
        `LoadError` if a generator thread stopped on a fatal error."""
        info = self.run.thread_info()
        errors_by_kind = {k: v for k, v in errors_by_kind.items() if v}
        extra.update({
            "pin_errors": [os.strerror(t["pin_error"]) for t in info if t["pin_error"]],
            "per_thread_cpu_s": [t["cpu_ns"] / 1e9 for t in info],
            "waits": counters["waits"],
            "stopped_early": self.stopped,
        })
        return LoadResult(
            mode=cfg.mode, config=cfg.to_dict(), sent=counters["m_sent"],
            received=counters["m_received"], lost=counters["m_lost"],
            error_replies=counters["m_error_replies"], unsent=counters["m_unsent"],
            errors=sum(errors_by_kind.values()), errors_by_kind=errors_by_kind,
            duration_s=_measured_seconds(cfg, info),
            cpu_s=sum(t["cpu_ns"] for t in info) / 1e9, timeline=self.sampler.rows,
            histogram=Histogram.from_native(self.run.histogram(0)),
            interrupted=self.interrupted, started_at=self.started_at, extra=extra, **fields)


def _wait(run: Any, cfg: LoadConfig, progress: Optional[ProgressCallback],
          stop_when: Optional[StopWhen], sampler: Sampler) -> tuple[bool, bool, Sampler]:
    """Sample the timeline once a second until the threads finish; handle Ctrl-C.
    Returns (interrupted, stopped by `stop_when`, the sampler holding the timeline)."""
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
    if time.monotonic() - sampler.last_t > 0.05 or sampler.unsampled():
        # The last partial second; however short, if anything was sent or
        # answered in it, so the timeline adds up to the whole run.
        sampler.sample()
    return interrupted, stopped, sampler


def _measured_seconds(cfg: LoadConfig, info: list[dict]) -> float:
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

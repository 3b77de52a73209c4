"""The subscription-density test: one pool of WebSocket connections follows
100, 500, then 1,000 symbols each (tiers), one `run_ws_load` per tier, with
the generator's and (given a PID) the server's RSS and CPU sampled every
second, and a pass / warn / fail verdict per tier against `DensityCriteria`.

A tier asks for more symbols per connection than the list holds by dealing
the list again (repeats): beastnet counts a repeated subscription once, so
such a tier follows fewer distinct symbols; the report says how many.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from beastnet.loadgen.ws_config import WSLoadConfig

__all__ = ["DEFAULT_TIERS", "DensityCriteria", "ProcSampler", "judge_tier", "run_density"]

DEFAULT_TIERS = (100, 500, 1000)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class DensityCriteria:
    """Limits a tier is judged by.  ``fail``: over a hard limit; ``warn``:
    over ``warn_fraction`` of a latency limit, or unstable."""

    p99_ms: float = 100.0               #: latency p99 limit
    min_messages_per_s: float = 0.0     #: throughput floor (0 = none)
    max_reconnects: int = 0             #: reconnects allowed in a tier
    max_gaps: int = 0                   #: sequence numbers allowed missing
    max_stall_ms: float = 1000.0        #: longest stall allowed on any connection
    max_rate_cv: float = 0.5            #: per-second message rate: stdev / mean above this warns
    warn_fraction: float = 0.8          #: latency above this share of its limit warns

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _proc_sample(pid: int) -> Optional[tuple[float, int]]:
    """(CPU seconds, RSS bytes) of `pid` from /proc, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    # Fields after the name: state is [0], utime [11], stime [12].
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, rss_pages * _PAGE


class ProcSampler:
    """RSS and CPU of some processes, one row per `sample()`: the CPU share
    since the last row (1.0 = one core) and the RSS in MiB."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = self.last_t = time.monotonic()
        self.last = {name: _proc_sample(pid) for name, pid in pids.items()}
        self.rows: list[dict[str, Any]] = []

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        span = max(now - self.last_t, 1e-9)
        row: dict[str, Any] = {"t": round(now - self.t0, 3)}
        for name, pid in self.pids.items():
            cur, prev = _proc_sample(pid), self.last.get(name)
            row[f"{name}_rss_mib"] = None if cur is None else round(cur[1] / 2**20, 1)
            row[f"{name}_cpu"] = (None if cur is None or prev is None
                                  else round((cur[0] - prev[0]) / span, 3))
            self.last[name] = cur
        self.last_t = now
        self.rows.append(row)
        return row


def _rate_cv(timeline: Sequence[dict]) -> Optional[float]:
    """stdev / mean of the per-second message rate after the warm-up."""
    rates = [row["rps"] for row in timeline if not row.get("warmup") and row["span_s"] > 0.5]
    if len(rates) < 2 or statistics.fmean(rates) <= 0:
        return None
    return statistics.pstdev(rates) / statistics.fmean(rates)


def errors_text(result: Any) -> str:
    """'374 connect_refused (nothing listening on the port?)': by kind, largest first."""
    hints = {"connect_refused": "nothing listening on the port?",
             "connect_timeout": "host down or filtered?",
             "upgrade_refused": "not a WebSocket endpoint, or the API key was refused?"}
    parts = sorted(((n, k) for k, n in result.errors_by_kind.items() if n), reverse=True)
    return ", ".join(f"{n:,} {k}" + (f" ({hints[k]})" if k in hints else "") for n, k in parts)


def judge_tier(result: Any, crit: DensityCriteria) -> tuple[str, list[str]]:
    """(verdict, reasons) of one tier's `LoadResult`."""
    fails: list[str] = []
    warns: list[str] = []
    e = result.extra
    p99 = result.percentile(99) / 1e6
    if result.received == 0:
        fails.append("no message received")
    if p99 == p99:                      # not NaN
        if p99 > crit.p99_ms:
            fails.append(f"p99 {p99:.2f} ms > {crit.p99_ms:g} ms")
        elif p99 > crit.warn_fraction * crit.p99_ms:
            warns.append(f"p99 {p99:.2f} ms is over {crit.warn_fraction:.0%} of the limit")
    elif result.received:
        warns.append("no message carried a timestamp: latency not measured")
    if e["messages_per_s"] < crit.min_messages_per_s:
        fails.append(f"{e['messages_per_s']:.0f} messages/s < {crit.min_messages_per_s:g}")
    if e["reconnects"] > crit.max_reconnects:
        fails.append(f"{e['reconnects']} reconnects > {crit.max_reconnects}")
    if result.errors:
        fails.append(f"{result.errors:,} connection errors: {errors_text(result)}")
    if result.lost > crit.max_gaps:
        fails.append(f"{result.lost} sequence numbers missing > {crit.max_gaps}")
    stall = e.get("longest_stall_ms")
    if stall is not None and stall > crit.max_stall_ms:
        fails.append(f"longest stall {stall:.0f} ms > {crit.max_stall_ms:g} ms")
    cv = _rate_cv(result.timeline)
    if cv is not None and cv > crit.max_rate_cv:
        warns.append(f"message rate varies: cv {cv:.2f} > {crit.max_rate_cv:g}")
    if fails:
        return "fail", fails + warns
    return ("warn", warns) if warns else ("pass", [])


def run_density(cfg: WSLoadConfig, tiers: Sequence[int] = DEFAULT_TIERS,
                criteria: Optional[DensityCriteria] = None, server_pid: Optional[int] = None,
                progress: Optional[Callable[[dict], None]] = None,
                on_tier: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """One run per tier (``cfg`` with ``symbols_per_connection`` = the tier);
    returns the report body: kind ``ws-density``, an overall verdict (the
    worst tier's) and per tier the result, distinct symbols, the RSS/CPU
    timeline, stability and verdict."""
    from beastnet.loadgen.ws import run_ws_load
    crit = criteria or DensityCriteria()
    pids = {"generator": os.getpid()}
    if server_pid is not None:
        pids["server"] = server_pid
    out: list[dict[str, Any]] = []
    for tier in tiers:
        tier_cfg = dataclasses.replace(cfg, symbols_per_connection=tier)
        sampler = ProcSampler(pids)

        def on_second(row: dict, sampler: ProcSampler = sampler) -> None:
            sampler.sample()
            if progress is not None:
                progress(row)

        result = run_ws_load(tier_cfg, progress=on_second)
        sampler.sample()
        verdict, reasons = judge_tier(result, crit)
        distinct = len({s for conn in tier_cfg.connection_symbols()[:1] for s in conn})
        entry = {"symbols_per_connection": tier, "distinct_symbols": distinct,
                 "connections": cfg.connections, "verdict": verdict, "reasons": reasons,
                 "messages_per_s": result.extra["messages_per_s"],
                 "rate_cv": _rate_cv(result.timeline), "resources": sampler.rows,
                 "result": result.to_dict()}
        out.append(entry)
        if on_tier is not None:
            on_tier(entry)
        if result.interrupted:
            break
    order = {"pass": 0, "warn": 1, "fail": 2}
    verdict = max((t["verdict"] for t in out), key=order.__getitem__, default="fail")
    return {"kind": "ws-density", "verdict": verdict, "criteria": crit.to_dict(), "tiers": out}

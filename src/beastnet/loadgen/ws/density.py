"""The subscription-density test: one pool of WebSocket connections follows
100, 500, then 1,000 symbols each (tiers), one `run_ws_load` per tier, with
the generator's and (given a PID) the server's RSS and CPU sampled every
second, and a pass / warn / fail verdict per tier (`verdict.judge_ws`, the
rules of every WebSocket run).

A tier asks for more symbols per connection than the list holds by dealing
the list again (repeats): beastnet counts a repeated subscription once, so
such a tier follows fewer distinct symbols; the report says how many.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

from beastnet.loadgen.ws.config import WSLoadConfig
from beastnet.loadgen.ws.verdict import WSCriteria, judge_ws, rate_cv

__all__ = ["DEFAULT_TIERS", "ProcSampler", "run_density"]

DEFAULT_TIERS = (100, 500, 1000)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


def run_density(cfg: WSLoadConfig, tiers: Sequence[int] = DEFAULT_TIERS,
                criteria: Optional[WSCriteria] = None, server_pid: Optional[int] = None,
                progress: Optional[Callable[[dict], None]] = None,
                on_tier: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """One run per tier (``cfg`` with ``symbols_per_connection`` = the tier);
    returns the report body: kind ``ws-density``, an overall verdict (the
    worst tier's) and per tier the result, distinct symbols, the RSS/CPU
    timeline, stability and verdict."""
    from beastnet.loadgen.ws.run import run_ws_load
    crit = criteria or WSCriteria()
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
        verdict, reasons = judge_ws(result, crit)
        distinct = len({s for conn in tier_cfg.connection_symbols()[:1] for s in conn})
        entry = {"symbols_per_connection": tier, "distinct_symbols": distinct,
                 "connections": cfg.connections, "verdict": verdict, "reasons": reasons,
                 "messages_per_s": result.extra["messages_per_s"],
                 "rate_cv": rate_cv(result.timeline), "resources": sampler.rows,
                 "result": result.to_dict()}
        out.append(entry)
        if on_tier is not None:
            on_tier(entry)
        if result.interrupted:
            break
    order = {"pass": 0, "warn": 1, "fail": 2}
    verdict = max((t["verdict"] for t in out), key=order.__getitem__, default="fail")
    return {"kind": "ws-density", "verdict": verdict, "criteria": crit.to_dict(), "tiers": out}

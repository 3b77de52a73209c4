"""The broadcast knee: more and more subscribers of the same symbols, one
`run_ws_load` per step, until the delivery latency p95 passes a limit (as
hashrocket's websocket-shootout does).  The knee is the last step within the
limit.  A step this machine cannot open (file descriptors, ephemeral ports)
is skipped with the reason and ends the search: never counted as passed.
"""
from __future__ import annotations

import dataclasses
import os
import resource
from typing import Any, Callable, Optional, Sequence

from beastnet.loadgen.ws.config import WSLoadConfig
from beastnet.loadgen.ws.verdict import errors_text

__all__ = ["DEFAULT_STEPS", "reach_problem", "run_knee"]

DEFAULT_STEPS = (10, 100, 500, 1000, 2000, 5000, 10000)
FD_SPARE = 64                           # descriptors left for the rest of the process


def _ephemeral_ports() -> Optional[int]:
    """Local ports one client address can use towards one server port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return None


def reach_problem(connections: int) -> Optional[str]:
    """Why this machine cannot hold `connections` client connections open at
    once (None: it can, as far as limits say)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    if hard != resource.RLIM_INFINITY and connections + in_use + FD_SPARE > hard:
        return (f"{connections} connections need more file descriptors than RLIMIT_NOFILE "
                f"allows ({hard}, hard limit)")
    ports = _ephemeral_ports()
    if ports is not None and connections > ports:
        return (f"{connections} connections to one server address exceed the {ports} "
                f"ephemeral ports (net.ipv4.ip_local_port_range)")
    return None


def run_knee(cfg: WSLoadConfig, steps: Sequence[int] = DEFAULT_STEPS, p95_ms: float = 50.0,
             progress: Optional[Callable[[dict], None]] = None,
             on_step: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Report body (kind ``ws-knee``): per step the subscribers, delivery
    p50/p95/p99, messages/s, errors and its verdict (``pass``, ``fail``:
    p95 over the limit or a broken step, ``skipped``: out of reach, with the
    reason), and ``knee``, the largest passing step before the first that is
    not (None if the first fails)."""
    from beastnet.loadgen.ws.run import run_ws_load
    out: list[dict[str, Any]] = []
    knee: Optional[int] = None
    for n in steps:
        problem = reach_problem(n)
        if problem is not None:
            out.append({"subscribers": n, "verdict": "skipped", "reasons": [problem]})
            break
        result = run_ws_load(dataclasses.replace(cfg, connections=n), progress=progress)
        p95 = result.percentile(95) / 1e6
        reasons = []
        if result.received == 0 or p95 != p95:
            reasons.append("no timestamped message received")
        elif p95 > p95_ms:
            reasons.append(f"p95 {p95:.2f} ms > {p95_ms:g} ms")
        if result.extra["upgrades"] < n:
            reasons.append(f"only {result.extra['upgrades']} of {n} subscribers connected")
        if result.errors:
            reasons.append(f"{result.errors:,} connection errors: {errors_text(result)}")
        step = {"subscribers": n, "verdict": "fail" if reasons else "pass", "reasons": reasons,
                "p50_ms": result.percentile(50) / 1e6, "p95_ms": p95,
                "p99_ms": result.percentile(99) / 1e6,
                "messages_per_s": result.extra["messages_per_s"],
                "result": result.to_dict()}
        out.append(step)
        if on_step is not None:
            on_step(step)
        if reasons or result.interrupted:
            break
        knee = n
    last = out[-1]["verdict"] if out else "fail"
    return {"kind": "ws-knee", "p95_limit_ms": p95_ms, "knee": knee, "steps": out,
            # No knee inside the steps tried is not a pass of the steps never run.
            "verdict": "fail" if knee is None else ("warn" if last == "skipped" else "pass")}

"""One verdict for a WebSocket run: `judge_ws` judges `beastnet load ws://`,
every `ws density` tier and the broadcast run of every `ws stress` level,
each against a `WSCriteria` (the stress ladder leaves latency to its own
thresholds and passes ``p99_ms=inf``).

The rules, each named in its reason by the flag that sets it:
  - nothing received fails;
  - delivery p99 above ``p99_ms`` fails (above ``warn_fraction`` of it warns);
  - fewer messages/s than ``min_messages_per_s`` fails;
  - more reconnects than ``max_reconnects`` fails (``--max-reconnects``);
  - connection errors fail;
  - sequence numbers missing (with a sequence key: lost messages, counted in
    the success rate, received / (received + missing)) beyond ``max_gaps``
    fail (``--max-gaps``, default 0);
  - a stall (no byte on an open connection) longer than ``max_stall_ms``
    fails (``--max-stall-ms``, default 1000);
  - a per-second message rate varying more than ``max_rate_cv`` warns.

Needs neither NumPy nor the native generator: results are read through
their attributes.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from beastnet.loadgen.verdict import short_load

__all__ = ["WSCriteria", "errors_text", "judge_ws", "rate_cv"]


@dataclass
class WSCriteria:
    """Limits a WebSocket run is judged by.  ``fail``: over a hard limit;
    ``warn``: over ``warn_fraction`` of the latency limit, or unstable."""

    p99_ms: float = 100.0               #: latency p99 limit (inf: not judged here)
    min_messages_per_s: float = 0.0     #: throughput floor (0 = none)
    max_reconnects: int = 0             #: reconnects allowed in a run
    max_gaps: int = 0                   #: sequence numbers allowed missing
    max_stall_ms: float = 1000.0        #: longest stall allowed on any connection
    max_rate_cv: float = 0.5            #: per-second message rate: stdev / mean above this warns
    warn_fraction: float = 0.8          #: latency above this share of its limit warns

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rate_cv(timeline: Sequence[dict]) -> Optional[float]:
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


def judge_ws(result: Any, crit: WSCriteria) -> tuple[str, list[str]]:
    """(verdict, reasons) of one WebSocket run's `LoadResult`: failures
    first (the first is the one line that says why), then warnings."""
    fails: list[str] = []
    warns: list[str] = []
    e = result.extra
    p99 = result.percentile(99) / 1e6
    short = short_load(result)
    if short is not None:
        fails.append(short)
    if result.received == 0:
        fails.append("no message received")
    if p99 == p99:                      # not NaN
        if p99 > crit.p99_ms:
            fails.append(f"p99 {p99:.2f} ms > {crit.p99_ms:g} ms")
        elif p99 > crit.warn_fraction * crit.p99_ms:
            warns.append(f"p99 {p99:.2f} ms is over {crit.warn_fraction:.0%} of the limit")
    elif result.received and crit.p99_ms != float("inf"):
        warns.append("no message carried a timestamp: latency not measured")
    if e["messages_per_s"] < crit.min_messages_per_s:
        fails.append(f"{e['messages_per_s']:.0f} messages/s < {crit.min_messages_per_s:g}")
    if result.lost > crit.max_gaps:
        fails.append(f"{result.lost:,} sequence numbers missing in {e['gap_events']:,} gaps: "
                     f"lost messages, success {result.success_rate:.3%} "
                     f"(--max-gaps {crit.max_gaps})")
    stall = e.get("longest_stall_ms")
    if stall is not None and stall > crit.max_stall_ms:
        fails.append(f"longest stall {stall:.0f} ms > --max-stall-ms {crit.max_stall_ms:g}")
    if e["reconnects"] > crit.max_reconnects:
        fails.append(f"{e['reconnects']} reconnects > --max-reconnects {crit.max_reconnects}")
    if result.errors:
        fails.append(f"{result.errors:,} connection errors: {errors_text(result)}")
    cv = rate_cv(result.timeline)
    if cv is not None and cv > crit.max_rate_cv:
        warns.append(f"message rate varies: cv {cv:.2f} > {crit.max_rate_cv:g}")
    if fails:
        return "fail", fails + warns
    return ("warn", warns) if warns else ("pass", [])

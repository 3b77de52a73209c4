"""Ramps of load levels, pass / warn / fail criteria, and the knee finder.

A ramp runs one closed-loop load per level (requests, concurrency), judges
each against `Criteria`, and stops at the breaking point (the first level that
fails) unless told to go on.  `find_max` ramps an open-loop rate until the SLO
breaks, then bisects to the highest rate the server sustains.  Both are
independent of the protocol: they call a function that runs one level.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from beastnet.errors import LoadConfigError
from beastnet.loadgen import LoadResult

__all__ = [
    "DEFAULT_RAMP",
    "Criteria",
    "KneeReport",
    "Level",
    "LevelResult",
    "RampReport",
    "SLO",
    "default_levels",
    "find_max",
    "parse_levels",
    "run_ramp",
]

#: DESIGN.md §7: (requests, concurrency) of levels 1..13.
DEFAULT_RAMP: tuple[tuple[int, int], ...] = (
    (300, 30), (900, 90), (3_000, 300), (9_000, 600), (30_000, 900), (90_000, 1_500),
    (300_000, 3_000), (600_000, 6_000), (900_000, 9_000), (1_500_000, 12_000),
    (3_000_000, 15_000), (6_000_000, 18_000), (9_000_000, 21_000),
)
QUICK_MAX_LEVEL = 6

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Level:
    number: int                 #: 1-based
    requests: int               #: measured requests to send
    concurrency: int            #: requests outstanding at once


def default_levels(quick: bool = False, max_level: Optional[int] = None) -> list[Level]:
    """The 13-level ramp of DESIGN.md §7; `quick` keeps levels 1-6."""
    top = len(DEFAULT_RAMP)
    if quick:
        top = QUICK_MAX_LEVEL
    if max_level is not None:
        if max_level < 1:
            raise LoadConfigError(f"max_level must be >= 1, got {max_level}")
        top = min(top, max_level)
    return [Level(i + 1, r, c) for i, (r, c) in enumerate(DEFAULT_RAMP[:top])]


def parse_levels(text: str) -> list[Level]:
    """"300x30,900x90" -> levels 1 and 2 (requests x concurrency)."""
    levels = []
    for i, part in enumerate(p for p in text.replace(" ", "").split(",") if p):
        try:
            requests, concurrency = (int(x.replace("_", "")) for x in part.lower().split("x"))
        except ValueError:
            raise LoadConfigError(f"level {part!r}: expected REQUESTSxCONCURRENCY") from None
        if requests < 1 or concurrency < 1:
            raise LoadConfigError(f"level {part!r}: requests and concurrency must be >= 1")
        levels.append(Level(i + 1, requests, concurrency))
    if not levels:
        raise LoadConfigError("no levels given")
    return levels


@dataclass
class Criteria:
    """Default: 100 % success through level 9; p50 < 10 ms and p99 < 300 ms in
    levels 5-8 (DESIGN.md §7).  Outside its levels a criterion only warns; a
    latency above `warn_fraction` of its limit warns too."""

    success_through: int = 9
    min_success: float = 1.0
    latency_from: int = 5
    latency_through: int = 8
    p50_ms: float = 10.0
    p99_ms: float = 300.0
    warn_fraction: float = 0.8

    def judge(self, level: Level, r: LoadResult) -> tuple[str, list[str]]:
        fails: list[str] = []
        warns: list[str] = []
        if r.attempted == 0:
            fails.append("no request was sent")
        success = r.success_rate
        if success < self.min_success:
            msg = (f"success {success:.4%} < {self.min_success:.2%} "
                   f"({r.lost} lost, {r.error_replies} error replies, {r.errors} errors)")
            (fails if level.number <= self.success_through else warns).append(msg)
        in_range = self.latency_from <= level.number <= self.latency_through
        for name, q, limit in (("p50", 50.0, self.p50_ms), ("p99", 99.0, self.p99_ms)):
            value = r.percentile(q) / 1e6
            if math.isnan(value):
                if in_range:
                    fails.append(f"{name}: no reply")
            elif value >= limit:
                (fails if in_range else warns).append(f"{name} {value:.3f} ms >= {limit:g} ms")
            elif in_range and value >= self.warn_fraction * limit:
                warns.append(f"{name} {value:.3f} ms near the {limit:g} ms limit")
        if r.interrupted:
            warns.append("interrupted")
        if r.sent + r.unsent < level.requests and not r.interrupted:
            warns.append(f"time cap hit after {r.sent} of {level.requests} requests")
        return (FAIL if fails else WARN if warns else PASS), fails + warns


@dataclass
class LevelResult:
    level: Level
    result: LoadResult
    verdict: str
    reasons: list[str]

    def to_dict(self, histogram: bool = True) -> dict[str, Any]:
        return {"level": self.level.number, "requests": self.level.requests,
                "concurrency": self.level.concurrency, "verdict": self.verdict,
                "reasons": self.reasons, "result": self.result.to_dict(histogram=histogram)}


@dataclass
class RampReport:
    levels: list[LevelResult]
    criteria: Criteria
    breaking_point: Optional[int] = None        #: first failing level number
    stopped_early: bool = False                 #: at the breaking point or on Ctrl-C
    interrupted: bool = False

    @property
    def verdict(self) -> str:
        verdicts = {lr.verdict for lr in self.levels}
        if not self.levels or FAIL in verdicts:
            return FAIL
        return WARN if WARN in verdicts else PASS

    def degradation(self) -> Optional[dict[str, Any]]:
        """How the best level (highest throughput) compares with the first."""
        if not self.levels:
            return None
        first = self.levels[0]
        best = max(self.levels, key=lambda lr: lr.result.rps)

        def ms(lr: LevelResult, q: float) -> Optional[float]:
            v = lr.result.percentile(q)
            return None if math.isnan(v) else v / 1e6

        def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
            return b / a if a and b is not None else None
        return {
            "first_level": first.level.number, "best_level": best.level.number,
            "rps_first": first.result.rps, "rps_best": best.result.rps,
            "p50_ms_first": ms(first, 50), "p50_ms_best": ms(best, 50),
            "p99_ms_first": ms(first, 99), "p99_ms_best": ms(best, 99),
            "p50_ratio": ratio(ms(first, 50), ms(best, 50)),
            "p99_ratio": ratio(ms(first, 99), ms(best, 99)),
            "success_first": first.result.success_rate, "success_best": best.result.success_rate,
        }

    def to_dict(self, histogram: bool = True) -> dict[str, Any]:
        return {"kind": "ramp", "verdict": self.verdict, "breaking_point": self.breaking_point,
                "stopped_early": self.stopped_early, "interrupted": self.interrupted,
                "criteria": asdict(self.criteria), "degradation": self.degradation(),
                "levels": [lr.to_dict(histogram) for lr in self.levels]}


def run_ramp(levels: Sequence[Level], run_level: Callable[[Level], LoadResult],
             criteria: Optional[Criteria] = None, stop_at_break: bool = True,
             on_level: Optional[Callable[[LevelResult], None]] = None) -> RampReport:
    """Run `run_level` for each level in order and judge it.  Stops after the
    breaking point when `stop_at_break`, and after a level that was
    interrupted (Ctrl-C) always."""
    criteria = criteria or Criteria()
    report = RampReport([], criteria)
    for level in levels:
        result = run_level(level)
        verdict, reasons = criteria.judge(level, result)
        lr = LevelResult(level, result, verdict, reasons)
        report.levels.append(lr)
        if on_level is not None:
            on_level(lr)
        if verdict == FAIL and report.breaking_point is None:
            report.breaking_point = level.number
            if stop_at_break and level is not levels[-1]:
                report.stopped_early = True
                break
        if result.interrupted:
            report.interrupted = report.stopped_early = True
            break
    return report


# -- the knee finder ------------------------------------------------------------------


@dataclass
class SLO:
    """What "sustainable" means for the knee finder."""

    p99_ms: float = 10.0
    max_loss: float = 0.001             #: lost / sent
    min_delivery: float = 0.95          #: answered / target: below it the server cannot keep up

    def check(self, rate: float, r: LoadResult) -> list[str]:
        breaches = []
        p99 = r.percentile(99) / 1e6
        if math.isnan(p99) or p99 > self.p99_ms:
            breaches.append(f"p99 {p99:.3f} ms > {self.p99_ms:g} ms")
        if r.sent == 0 or r.loss_rate > self.max_loss:
            breaches.append(f"loss {r.loss_rate:.3%} > {self.max_loss:.3%}")
        if r.rps < self.min_delivery * rate:
            breaches.append(f"answered {r.rps:.0f}/s < {self.min_delivery:.0%} of {rate:.0f}/s")
        return breaches


@dataclass
class KneeReport:
    slo: SLO
    knee_rps: Optional[float] = None            #: highest rate that met the SLO
    first_breach_rps: Optional[float] = None    #: lowest rate that did not
    probes: list[dict] = field(default_factory=list)
    interrupted: bool = False
    results: list[LoadResult] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return PASS if self.knee_rps is not None else FAIL

    def to_dict(self, histogram: bool = False) -> dict[str, Any]:
        return {"kind": "find-max", "verdict": self.verdict, "knee_rps": self.knee_rps,
                "first_breach_rps": self.first_breach_rps, "slo": asdict(self.slo),
                "interrupted": self.interrupted, "probes": self.probes,
                "results": [r.to_dict(histogram=histogram) for r in self.results]}


def find_max(run_at_rate: Callable[[float], LoadResult], start_rate: float = 1000.0,
             slo: Optional[SLO] = None, growth: float = 2.0, precision: float = 0.05,
             max_probes: int = 16, max_rate: Optional[float] = None,
             on_probe: Optional[Callable[[dict], None]] = None) -> KneeReport:
    """Grow the open-loop rate by `growth` until the SLO breaks, then bisect
    until the bracket is within `precision` (relative); at most `max_probes`
    runs.  The knee is the highest rate that met the SLO."""
    if not start_rate > 0 or growth <= 1.0 or not 0 < precision < 1 or max_probes < 1:
        raise LoadConfigError("find_max: start_rate > 0, growth > 1, 0 < precision < 1")
    slo = slo or SLO()
    report = KneeReport(slo)
    lo: Optional[float] = None
    hi: Optional[float] = None
    rate = start_rate
    while len(report.probes) < max_probes:
        result = run_at_rate(rate)
        breaches = slo.check(rate, result)
        probe = {"rate": rate, "ok": not breaches, "rps": result.rps,
                 "p50_ms": result.percentile(50) / 1e6, "p99_ms": result.percentile(99) / 1e6,
                 "loss": result.loss_rate, "breaches": breaches}
        probe = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in probe.items()}
        report.probes.append(probe)
        report.results.append(result)
        if on_probe is not None:
            on_probe(probe)
        if result.interrupted:
            report.interrupted = True
            break
        if breaches:
            hi = rate if hi is None else min(hi, rate)
        else:
            lo = rate if lo is None else max(lo, rate)
        if hi is None:                          # still growing
            if max_rate is not None and rate >= max_rate:
                break
            rate = rate * growth if max_rate is None else min(rate * growth, max_rate)
        elif lo is None:                        # even the start breaks: look lower
            if rate < 1.0:
                break
            rate = rate / growth
        else:
            if (hi - lo) / lo <= precision:
                break
            rate = (lo + hi) / 2.0
    report.knee_rps = lo
    report.first_breach_rps = hi
    return report

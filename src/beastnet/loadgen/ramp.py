"""Ramps of load levels, pass / warn / fail verdicts, and the knee finder:
the load generator's policy, kept out of the CLI.

A ramp runs one closed-loop load per level (requests, concurrency), judges
each against `Criteria`, and stops at the breaking point (the first level that
fails) unless told to go on.  `find_max` ramps an open-loop rate until the SLO
breaks, then bisects to the highest rate the server sustains.  Both are
independent of the protocol: they call a function that runs one level.
`ramp_load` and `find_max_load` wire them to the runner of the config's
kind of target (`targets`); `judge_run` and `abort_when` are the verdict of a single run
and its early-stop thresholds.

`DEFAULT_RAMP` is the one table of the 13 default levels: `beastnet load
--help` and docs/loadgen.md are produced from it (`ramp_table`).

This module needs neither NumPy nor the native extension (results are only
read through their methods), so the CLI imports it to build its help.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from beastnet.errors import LoadConfigError
from beastnet.loadgen.targets import kind_of_mode
from beastnet.loadgen.verdict import (DEFAULT_MIN_SUCCESS, FAIL, PASS, WARN, Expect,
                                      judge_outcomes, unreachable, verdict_of)

if TYPE_CHECKING:
    from beastnet.loadgen.config import LoadConfig
    from beastnet.loadgen.result import LoadResult

__all__ = [
    "DEFAULT_RAMP",
    "Criteria",
    "NOT_MET_ON_THIS_MACHINE",
    "KneeReport",
    "Level",
    "LevelResult",
    "RampReport",
    "SLO",
    "abort_when",
    "criteria_text",
    "default_levels",
    "find_max",
    "find_max_load",
    "judge_run",
    "parse_level_range",
    "parse_levels",
    "ramp_load",
    "ramp_table",
    "run_ramp",
    "runner_for",
    "select_levels",
]

#: The default ramp: (requests, concurrency) of levels 1..13.  Each level
#: sends `requests` measured requests with `concurrency` of them outstanding.
DEFAULT_RAMP: tuple[tuple[int, int], ...] = (
    (300, 30), (900, 90), (3_000, 300), (9_000, 600), (30_000, 900), (90_000, 1_500),
    (300_000, 3_000), (600_000, 6_000), (900_000, 9_000), (1_500_000, 12_000),
    (3_000_000, 15_000), (6_000_000, 18_000), (9_000_000, 21_000),
)
QUICK_MAX_LEVEL = 6

STOPPED_EARLY = "stopped early: an abort threshold was crossed"


@dataclass(frozen=True)
class Level:
    number: int                 #: 1-based
    requests: int               #: measured requests to send
    concurrency: int            #: requests outstanding at once


def default_levels(quick: bool = False, max_level: Optional[int] = None) -> list[Level]:
    """The 13 levels of `DEFAULT_RAMP`; `quick` keeps levels 1-6."""
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


#: How a latency limit the machine's throughput cannot meet is named (`Criteria`).
NOT_MET_ON_THIS_MACHINE = "not met on this machine"


@dataclass
class LevelLimits:
    """The limits a ramp judges its levels by, set on `beastnet load`'s
    command line (`Criteria`) or in a plan file (`plan.spec.CriteriaSpec`):
    levels 1 to ``success_through`` answer at least ``min_success`` of their
    requests, levels ``latency_from`` to ``latency_through`` keep their p50
    and p99 under ``p50_ms`` and ``p99_ms``."""

    success_through: int = 9            # success judged strictly up to this level
    min_success: float = 1.0            # the fraction of requests answered
    latency_from: int = 5               # latency judged strictly in from..through
    latency_through: int = 8
    p50_ms: float = 10.0
    p99_ms: float = 300.0


@dataclass
class Criteria(LevelLimits):
    """Default: 100 % success through level 9; p50 < 10 ms and p99 < 300 ms in
    levels 5-8.  Success follows the rules of a single run
    (`verdict.judge_outcomes`, with `expect`); outside its levels a criterion
    only warns -- except that a level where nothing was answered always
    fails.  A latency above `warn_fraction` of its limit warns too.  A level
    that an abort threshold stopped early (``extra["stopped_early"]``) fails.

    ``machine_relative``: a latency limit this machine's throughput cannot
    meet warns instead of failing, saying so.  In a closed loop of C requests
    in flight answered at X req/s, Little's law puts the mean latency at C / X,
    so a limit L asks for at least C / L req/s: when the level answered fewer,
    its latency failure follows from the machine's throughput alone ("not met
    on this machine").  A latency failure at a throughput that meets the bar
    (a slow tail, a stall) still fails, and so does every success failure."""

    warn_fraction: float = 0.8
    expect: Expect = field(default_factory=Expect)
    machine_relative: bool = False

    def judge(self, level: Level, r: LoadResult) -> tuple[str, list[str]]:
        fails: list[str] = []
        warns: list[str] = []
        judgement, outcome_fails = judge_outcomes(r, self.min_success, self.expect)
        if level.number <= self.success_through or not r.received:
            fails += outcome_fails
        else:
            warns += outcome_fails
        in_range = self.latency_from <= level.number <= self.latency_through
        for name, q, limit in (("p50", 50.0, self.p50_ms), ("p99", 99.0, self.p99_ms)):
            value = r.percentile(q) / 1e6
            if math.isnan(value):
                if in_range and r.received:
                    fails.append(f"{name}: no reply")
            elif value >= limit:
                reason = f"{name} {value:.3f} ms >= {limit:g} ms"
                bar = self.throughput_bar(level, limit)
                if in_range and self.machine_relative and r.rps < bar:
                    warns.append(f"{reason}: {NOT_MET_ON_THIS_MACHINE} (at {level.concurrency:,} "
                                 f"in flight the limit asks for >= {bar:,.0f} req/s by Little's "
                                 f"law; answered {r.rps:,.0f} req/s)")
                else:
                    (fails if in_range else warns).append(reason)
            elif in_range and value >= self.warn_fraction * limit:
                warns.append(f"{name} {value:.3f} ms near the {limit:g} ms limit")
        if r.extra.get("stopped_early"):
            fails.append(STOPPED_EARLY)
        if r.interrupted:
            warns.append("interrupted")
        if r.sent + r.unsent < level.requests and not r.interrupted:
            warns.append(f"time cap hit after {r.sent} of {level.requests} requests")
        return verdict_of(fails, warns), fails + warns

    @staticmethod
    def throughput_bar(level: Level, limit_ms: float) -> float:
        """req/s a closed loop of ``level.concurrency`` needs for a mean
        latency under `limit_ms` (Little's law)."""
        return level.concurrency / (limit_ms / 1e3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expect"] = self.expect.to_dict()
        return d


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
    def unreachable(self) -> bool:
        """Nothing came back from the target in the first level."""
        return bool(self.levels) and unreachable(self.levels[0].result)

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
                "unreachable": self.unreachable, "criteria": self.criteria.to_dict(), "degradation": self.degradation(),
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

    @property
    def unreachable(self) -> bool:
        """Nothing came back from the target in the first probe."""
        return bool(self.results) and unreachable(self.results[0])

    def to_dict(self, histogram: bool = True) -> dict[str, Any]:
        return {"kind": "find-max", "verdict": self.verdict, "knee_rps": self.knee_rps,
                "unreachable": self.unreachable,
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


# -- the default table, as help and docs show it --------------------------------------


def ramp_table(markdown: bool = False) -> str:
    """`DEFAULT_RAMP` and the default `Criteria` as a table: plain text for
    `beastnet load --help`, Markdown for docs/loadgen.md (a test keeps the
    docs equal to this)."""
    c = Criteria()
    rows = []
    for lv in default_levels():
        checks = []
        if lv.number <= c.success_through:
            checks.append(f"{c.min_success:.0%} success")
        if c.latency_from <= lv.number <= c.latency_through:
            checks.append(f"p50 < {c.p50_ms:g} ms, p99 < {c.p99_ms:g} ms")
        rows.append((str(lv.number), f"{lv.requests:,}", f"{lv.concurrency:,}",
                     "; ".join(checks) or "(warnings only)"))
    head = ("level", "requests", "concurrency", "must pass")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| ---: | ---: | ---: | --- |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    return "\n".join(f"  {r[0]:>{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
                     for r in [head] + rows)


def criteria_text(c: Optional[Criteria] = None) -> str:
    """The criteria in one sentence."""
    c = c or Criteria()
    return (f"{c.min_success:.0%} success through level {c.success_through}; "
            f"p50 < {c.p50_ms:g} ms and p99 < {c.p99_ms:g} ms in levels "
            f"{c.latency_from}-{c.latency_through}; elsewhere a breach only warns")


# -- choosing levels and judging a single run -----------------------------------------


def select_levels(levels: Optional[str] = None, quick: bool = False,
                  max_level: Optional[int] = None) -> list[Level]:
    """The levels of a ramp: a custom list ("300x30,900x90") cut at
    `max_level`, or the default table (`quick`: levels 1-6)."""
    if levels:
        chosen = parse_levels(levels)
        return chosen[:max_level] if max_level else chosen
    return default_levels(quick=quick, max_level=max_level)


def parse_level_range(text: str) -> tuple[int, int]:
    """"5-8" -> (5, 8); "5" -> (5, 5)."""
    try:
        a, _, b = text.partition("-")
        return int(a), int(b or a)
    except ValueError:
        raise LoadConfigError(f"level range {text!r}: expected A-B") from None


def judge_run(r: LoadResult, max_p99_ms: Optional[float] = None,
              min_success: Optional[float] = None,
              expect: Optional[Expect] = None) -> tuple[str, list[str]]:
    """The verdict of a single run ("pass" or "fail") and why, the first
    reason being the one line to show: nothing sent or answered, success
    below `min_success` (default 99.9 %) with `expect`ed outcomes counted as
    successes, too many transport errors, above `max_p99_ms`, or stopped by
    an abort threshold."""
    _, fails = judge_outcomes(r, DEFAULT_MIN_SUCCESS if min_success is None else min_success,
                              expect)
    if max_p99_ms is not None and r.received:
        p99 = r.percentile(99) / 1e6
        if math.isnan(p99) or p99 > max_p99_ms:
            fails.append(f"p99 {p99:.3f} ms > {max_p99_ms:g} ms")
    if r.extra.get("stopped_early"):
        fails.append(STOPPED_EARLY)
    return verdict_of(fails), fails


def abort_when(max_loss: Optional[float] = None,
               max_p99_ms: Optional[float] = None) -> Optional[Callable[[dict], bool]]:
    """A `stop_when` for the runs: true once one second of the timeline
    loses more than `max_loss` of its requests or has a p99 above
    `max_p99_ms`.  None when neither is set."""
    if max_loss is None and max_p99_ms is None:
        return None

    def breached(row: dict) -> bool:
        if max_loss is not None and row["sent"] and row["lost"] / row["sent"] > max_loss:
            return True
        p99 = row.get("p99_ns")
        return max_p99_ms is not None and p99 is not None and p99 / 1e6 > max_p99_ms
    return breached


# -- ramps and knee finding over the real load generator ------------------------------


def runner_for(cfg: LoadConfig) -> Callable[..., LoadResult]:
    """The runner of the config's kind of target (`targets.KINDS`)."""
    return kind_of_mode(cfg.mode).run_function()


def ramp_load(base: LoadConfig, levels: Sequence[Level], criteria: Optional[Criteria] = None,
              *, max_seconds: float = 60.0, stop_at_break: bool = True,
              progress: Optional[Callable[[dict], None]] = None,
              stop_when: Optional[Callable[[dict], bool]] = None,
              before_level: Optional[Callable[[Level], None]] = None,
              on_level: Optional[Callable[[LevelResult], None]] = None,
              runner: Optional[Callable[..., LoadResult]] = None) -> RampReport:
    """Run `levels` against the server of `base` (each level at most
    `max_seconds`) and judge them (see `run_ramp`).  `runner` replaces the
    kind's own (load agents: `agents.Coordinator.run`)."""
    run = runner or runner_for(base)

    def run_level(level: Level) -> LoadResult:
        if before_level is not None:
            before_level(level)
        result = run(base.at_level(level.requests, level.concurrency, max_seconds),
                     progress=progress, stop_when=stop_when)
        if result.extra.get("stopped_early"):
            result.extra["abort_reason"] = "abort threshold crossed"
        return result
    return run_ramp(levels, run_level, criteria, stop_at_break=stop_at_break, on_level=on_level)


def find_max_load(base: LoadConfig, *, step_s: float = 2.0, slo: Optional[SLO] = None,
                  start_rate: float = 1000.0, max_probes: int = 16,
                  max_rate: Optional[float] = None,
                  progress: Optional[Callable[[dict], None]] = None,
                  stop_when: Optional[Callable[[dict], bool]] = None,
                  before_probe: Optional[Callable[[float], None]] = None,
                  on_probe: Optional[Callable[[dict], None]] = None,
                  runner: Optional[Callable[..., LoadResult]] = None) -> KneeReport:
    """The knee finder (`find_max`) against the server of `base`: each probe
    runs open loop for `step_s` measured seconds (through `runner`, if given)."""
    run = runner or runner_for(base)

    def at_rate(rate: float) -> LoadResult:
        if before_probe is not None:
            before_probe(rate)
        return run(base.at_rate(rate, step_s), progress=progress, stop_when=stop_when)
    return find_max(at_rate, start_rate=start_rate, slo=slo, max_probes=max_probes,
                    max_rate=max_rate, on_probe=on_probe)

"""The verdict of one run: what counts as success, what a user declared
expected, and the one line that says why a run failed.

A request succeeds when it is answered with a plain answer (UDP: a body that
is not ``{"error":...}``; HTTP: a 2xx status) or with an outcome the user
declared expected (`Expect`: ``--expect rate_limited``, ``--expect-status
429``).  Everything else -- lost, failed, never sent, an unexpected error body
or status -- counts against the success rate.  A run fails when nothing was
answered, when the success rate is below the threshold (default 99.9 %), or
when transport errors (refused, reset, unparsable replies) exceed the same
share of the requests.  Ramps apply these rules to each level
(`ramp.Criteria`), single runs through `judge_run`.

"Unreachable" is the case where nothing at all came back from the target:
no answer, no late or stray reply, no bytes that failed to parse.  The CLI
exits 3 then, so a script can tell a dead server from a slow one.

Like `ramp`, this module needs neither NumPy nor the native load generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

from beastnet._core import ERROR_STATUS
from beastnet.errors import LoadConfigError
from beastnet.loadgen.targets import kind_of_mode

if TYPE_CHECKING:
    from beastnet.loadgen.result import LoadResult

__all__ = [
    "DEFAULT_MIN_SUCCESS",
    "ERROR_NAMES",
    "Expect",
    "Judgement",
    "judge_outcomes",
    "short_load",
    "summary_line",
    "unreachable",
    "verdict_of",
]

PASS, WARN, FAIL = "pass", "warn", "fail"

#: The default success threshold of a single run.
DEFAULT_MIN_SUCCESS = 0.999

#: The error bodies a beastnet server answers, as ``--expect`` accepts them.
ERROR_NAMES: tuple[str, ...] = tuple(ERROR_STATUS)

# Counted separately by the UDP generator (result.error_bodies); the other
# names only reach it as "other".
UDP_COUNTED_NAMES = ("not_found", "unauthorized", "rate_limited", "over_quota", "busy",
                     "bad_request")

# Backpressure, not failure: the kernel's socket buffer was full and the
# request was sent again later (closed loop) or stayed due (open loop).  It
# shows in the report but neither fails a run nor counts as a cause.
_BACKPRESSURE = ("nobufs",)

# Transport errors that prove bytes came back from the target.
_ANSWERING_ERRORS = ("parse", "too_large", "closed_mid_response")

# A hint for the most common causes, after the count in the reason line.
_HINTS = {
    "refused": "nothing listening on the port?",
    "connect_refused": "nothing listening on the port?",
    "connect_timeout": "host down or filtered?",
    "parse": "not an HTTP server?",
    "unauthorized": "missing or wrong --api-key?",
    "status 401": "missing or wrong --api-key?",
    "lost": "no answer within --timeout-ms; a beastnet server enforcing API keys "
            "leaves requests without a valid --api-key unanswered",
}


@dataclass(frozen=True)
class Expect:
    """Outcomes a user declared expected: they count as successes."""

    names: frozenset = field(default_factory=frozenset)       #: error body names
    statuses: frozenset = field(default_factory=frozenset)    #: HTTP statuses

    @classmethod
    def parse(cls, names: Iterable[str] = (), statuses: Iterable[str] = ()) -> "Expect":
        """From ``--expect`` and ``--expect-status`` values (each may be a
        comma-separated list); `LoadConfigError` on an unknown name or a
        status outside 100-599."""
        got_names: set[str] = set()
        for item in names:
            for name in filter(None, (n.strip() for n in item.split(","))):
                if name not in ERROR_NAMES:
                    raise LoadConfigError(f"--expect {name!r}: expected one of "
                                          + ", ".join(ERROR_NAMES))
                got_names.add(name)
        got_statuses: set[int] = set()
        for item in statuses:
            for text in filter(None, (s.strip() for s in item.split(","))):
                try:
                    status = int(text)
                except ValueError:
                    status = 0
                if not 100 <= status <= 599:
                    raise LoadConfigError(f"--expect-status {text!r}: expected an HTTP status "
                                          "100-599")
                got_statuses.add(status)
        return cls(frozenset(got_names), frozenset(got_statuses))

    def http_statuses(self) -> set[int]:
        """Statuses that count as success over HTTP: the declared ones and
        those of the declared error names (rate_limited -> 429)."""
        return set(self.statuses) | {ERROR_STATUS[n] for n in self.names}

    def to_dict(self) -> dict[str, list]:
        return {"names": sorted(self.names), "statuses": sorted(self.statuses)}


@dataclass
class Judgement:
    """The success rate under an `Expect`, and what went wrong."""

    good: int                           #: requests that succeeded
    attempted: int
    problems: list                      #: (count, label) of each bad outcome, largest first
    errors: int                         #: transport errors (events, not requests)

    @property
    def success_rate(self) -> float:
        return self.good / self.attempted if self.attempted else 0.0

    def causes(self, limit: int = 3) -> str:
        """"640 lost, 10 refused (nothing listening on the port?)"."""
        parts = []
        for count, label in self.problems[:limit]:
            hint = _HINTS.get(label)
            parts.append(f"{count:,} {label}" + (f" ({hint})" if hint else ""))
        return ", ".join(parts) or "no cause recorded"


def _bad_outcomes(r: LoadResult, expect: Expect) -> tuple[int, list[tuple[int, str]]]:
    """(good requests, [(count, label) of every bad outcome]) of `r`."""
    problems: list[tuple[int, str]] = []
    if kind_of_mode(r.mode).statuses:
        ok_statuses = expect.http_statuses()
        good = 0
        for status, count in r.status_codes.items():
            code = int(status)
            if 200 <= code < 300 or code in ok_statuses:
                good += count
            else:
                problems.append((count, f"status {code}"))
    else:
        bodies = dict(r.error_bodies)
        good = r.received - r.error_replies
        for name, count in bodies.items():
            if name in expect.names:
                good += count
            elif count:
                problems.append((count, name if name != "other" else "other error bodies"))
    problems += [(r.lost, "lost"), (r.failed, "failed (connection broke)"),
                 (r.unsent, "never sent (generator behind)")]
    problems += [(n, kind) for kind, n in r.errors_by_kind.items() if kind not in _BACKPRESSURE]
    problems = sorted((p for p in problems if p[0]), key=lambda p: -p[0])
    return good, problems


def judge_outcomes(r: LoadResult, min_success: float = DEFAULT_MIN_SUCCESS,
                   expect: Optional[Expect] = None) -> tuple[Judgement, list[str]]:
    """The outcome rules shared by single runs and ramp levels: the
    judgement and its failures (empty: the outcomes pass).  The first
    failure is the one line that says why."""
    expect = expect or Expect()
    good, problems = _bad_outcomes(r, expect)
    j = Judgement(good, r.attempted, problems, r.errors)
    fails = []
    short = short_load(r)
    if short is not None:
        fails.append(short)
    sent_all, received_all = _whole_run(r)
    if r.attempted == 0 and sent_all and not received_all:
        # Closed loop against a silent target: the warm-up filled every slot
        # and no slot came free again to send a measured request.
        fails.append(f"nothing was answered: {sent_all:,} requests sent in the warm-up, "
                     "none answered, none measured")
    elif r.attempted == 0:
        fails.append("no request was sent" + (f": {j.causes()}" if problems else ""))
    elif r.received == 0:
        fails.append(f"nothing was answered: {j.causes()}")
    elif j.success_rate < min_success:
        fails.append(f"success {j.success_rate:.3%} < {min_success:.3%}: {j.causes()}")
    failures = {k: n for k, n in r.errors_by_kind.items() if k not in _BACKPRESSURE and n}
    count = sum(failures.values())
    if r.attempted and count / r.attempted > 1.0 - min_success and r.received:
        errors = ", ".join(f"{n:,} {k}" for k, n in sorted(failures.items(), key=lambda kv: -kv[1]))
        fails.append(f"{count:,} transport errors in {r.attempted:,} requests: {errors}")
    return j, fails


def short_load(r: Any) -> Optional[str]:
    """Why a run of several load agents offered less load than asked (an
    agent died, failed or went silent mid-run), or None."""
    short = r.extra.get("agents_short") or []
    if not short:
        return None
    return "the load was short: " + "; ".join(
        f"agent {a['name']} {a['state']} ({a['message']}) after sending {a['sent']:,}"
        for a in short)


def _whole_run(r: LoadResult) -> tuple[int, int]:
    """(sent, answered) over the whole run, warm-up included, from the
    timeline."""
    return (sum(row.get("sent", 0) for row in r.timeline),
            sum(row.get("received", 0) for row in r.timeline))


def unreachable(r: LoadResult) -> bool:
    """True when nothing at all came back from the target: no answer, no
    late, stray or unparsable reply."""
    if r.received or r.late or r.unmatched or r.bad_replies:
        return False
    sent_all, received_all = _whole_run(r)
    if received_all:
        return False
    if r.attempted == 0 and not r.errors and not sent_all:
        return False                    # nothing tried: not the target's fault
    return not any(r.errors_by_kind.get(kind) for kind in _ANSWERING_ERRORS)


def verdict_of(fails: list[str], warns: Optional[list[str]] = None) -> str:
    """fail if any failure, warn if any warning, else pass."""
    return FAIL if fails else WARN if warns else PASS


def summary_line(body: dict[str, Any]) -> str:
    """"verdict: FAIL: <the first reason>" -- one line for a terminal or a CI log."""
    verdict = str(body.get("verdict", "")).upper()
    reasons = body.get("reasons") or []
    if body.get("kind") == "ramp" and verdict == "FAIL":
        for lv in body.get("levels", []):
            if lv["verdict"] == FAIL and lv["reasons"]:
                return f"verdict: FAIL: level {lv['level']}: {lv['reasons'][0]}"
    if verdict == "FAIL" and reasons:
        return f"verdict: FAIL: {reasons[0]}"
    return f"verdict: {verdict}"

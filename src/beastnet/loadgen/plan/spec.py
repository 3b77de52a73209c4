"""The plan file: targets, the tests and their criteria, the red-flag
thresholds, read from TOML (`tomllib`) and checked with one-line errors
that name the key.

The default plan is the original stress plan's seven tests in two phases
(`DEFAULT_PLAN`, `beastnet plan --print-default`).  A scale (`SCALES`)
keeps its shape and shrinks it: each level's requests and concurrency
divided, the ramp cut at a level, the endurance test shortened.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn, Optional

from beastnet.errors import LoadConfigError
from beastnet.loadgen.ramp import LevelLimits

__all__ = ["DEFAULT_PLAN", "SCALES", "Plan", "PlanError", "PlanTest", "RedFlags", "Scale",
           "TargetSpec", "load_plan", "parse_plan"]


class PlanError(LoadConfigError):
    """A plan file that cannot be used: the message names the key."""


@dataclass(frozen=True)
class Scale:
    """How a plan is shrunk for a smaller host: levels divided by
    `divisor` (at least 1 request and 1 in flight), ramps cut after
    `max_level`, fixed-rate tests at most `fixed_s` seconds."""

    name: str
    divisor: int
    max_level: int
    fixed_s: float
    rate_divisor: float


SCALES: dict[str, Scale] = {
    "full": Scale("full", 1, 13, 1800.0, 1.0),
    # A 2-core host: the same seven tests, a tenth of each level, the
    # endurance run 2 minutes.
    "2core": Scale("2core", 10, 9, 120.0, 10.0),
    # The tests' scale: seconds per test.
    "tiny": Scale("tiny", 10, 3, 2.0, 100.0),
}

PROTOCOLS = ("tcp", "udp")
ACCESS = ("direct", "balanced")


@dataclass
class RedFlags:
    """Thresholds of the live red flags, each raised when crossed over one poll."""

    syncmap_hit_min_pct: float = 99.0     # cache hits / requests answered from the table
    udp_drop_max_pct: float = 1.0         # kernel drops / (received + kernel drops)
    bg_drop_max_pct: float = 5.0          # miss-queue drops / misses
    flush_errors_max: int = 0             # usage flush errors
    memory_climb_max_pct: float = 20.0    # a node's RSS growth since the test began
    http_5xx_max: int = 0                 # 5xx answers (HTTP queue drops: 503 busy)


@dataclass
class CriteriaSpec(LevelLimits):
    """A test's pass/warn/fail rules (`beastnet.loadgen.ramp.Criteria`), with
    the expected errors as the plan file names them."""

    expect: list[str] = field(default_factory=list)
    machine_relative: bool = True


@dataclass
class PlanTest:
    """One test of the plan.  `levels` (requests x concurrency) make a ramp;
    `rate` (req/s, or "0.8 * 2a": a share of an earlier test's ceiling) and
    `duration_s` a fixed-rate run.  `report_rate` adds a second load on the
    usage reports (`/v1/reports/usage`) beside the price load."""

    name: str
    title: str
    protocol: str
    access: str
    tier: str
    profile: str
    governor: bool
    phase: int = 1
    levels: list[tuple[int, int]] = field(default_factory=list)
    rate: Optional[float] = None
    rate_of: Optional[tuple[float, str]] = None     # (share, test name)
    duration_s: Optional[float] = None
    report_rate: Optional[float] = None
    keys: list[str] = field(default_factory=lambda: ["BTC", "ETH"])
    criteria: CriteriaSpec = field(default_factory=CriteriaSpec)

    @property
    def ramp(self) -> bool:
        return bool(self.levels)


@dataclass
class TargetSpec:
    """Where the plan runs: "local" (`beastnet plan local` starts it) or
    the nodes' URLs and the load balancers' addresses."""

    local: bool = True
    nodes: list[dict[str, str]] = field(default_factory=list)   # name, admin, http, udp
    balanced_http: Optional[str] = None     # https://HOST:PORT/v1/ (the TLS load balancer)
    balanced_udp: Optional[str] = None      # HOST:PORT (the UDP load balancer)
    cacert: Optional[str] = None
    admin_token_env: Optional[str] = None
    keys: dict[str, str] = field(default_factory=dict)          # tier -> API key


@dataclass
class Plan:
    name: str
    scale: Scale
    target: TargetSpec
    tests: list[PlanTest]
    red_flags: RedFlags
    poll_s: float = 3.0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # API keys never reach a report: not as values, not in the plan's text.
        out["target"]["keys"] = {tier: "***" for tier in self.target.keys}
        for key in self.target.keys.values():
            out["source"] = out["source"].replace(key, "***")
        return out


DEFAULT_PLAN = """\
# beastnet's stress plan: seven tests in two phases.  Phase 1 loads one node
# directly with the governor off; phase 2 goes through the load balancers
# (TLS for TCP) with the governor on.  `beastnet plan run --scale 2core`
# keeps this shape on a small host.
name = "stress plan"
poll_s = 3                          # seconds between reads of /admin/cluster-stats

[target]
local = true                        # `beastnet plan local` starts the topology
# nodes = [{name = "node1", admin = "http://10.0.0.1:8081", http = "http://10.0.0.1:8080/v1/",
#           udp = "10.0.0.1:9000"}]
# balanced_http = "https://api.example.com/v1/"
# balanced_udp = "udp.example.com:9000"
# admin_token_env = "BEASTNET_ADMIN_TOKEN"
# keys = {partner = "bk_...", public = "bk_..."}

[red_flags]
syncmap_hit_min_pct = 99.0
udp_drop_max_pct = 1.0
bg_drop_max_pct = 5.0
flush_errors_max = 0
memory_climb_max_pct = 20.0
http_5xx_max = 0

[criteria]                          # every test's, unless it sets its own
success_through = 9
p50_ms = 10.0
p99_ms = 300.0
latency_from = 5
latency_through = 8

[[tests]]
name = "1a"
title = "TCP direct to one node"
phase = 1
protocol = "tcp"
access = "direct"
tier = "partner"
profile = "stress-tcp-direct"
governor = false
levels = "default"

[[tests]]
name = "1b"
title = "UDP direct to one node"
phase = 1
protocol = "udp"
access = "direct"
tier = "partner"
profile = "stress-udp-direct"
governor = false
levels = "default"

[[tests]]
name = "2a"
title = "TCP public path: TLS load balancer"
phase = 2
protocol = "tcp"
access = "balanced"
tier = "partner"
profile = "production"
governor = true
levels = "default"

[[tests]]
name = "2b"
title = "UDP partner through the UDP load balancer"
phase = 2
protocol = "udp"
access = "balanced"
tier = "partner"
profile = "production"
governor = true
levels = "default"

[[tests]]
name = "2c"
title = "UDP public (rate-limited) through the UDP load balancer"
phase = 2
protocol = "udp"
access = "balanced"
tier = "public"
profile = "production"
governor = true
levels = "default"
criteria = {expect = ["rate_limited"]}

[[tests]]
name = "2d"
title = "Price and usage-report load at once"
phase = 2
protocol = "tcp"
access = "balanced"
tier = "partner"
profile = "production"
governor = true
levels = "default"
report_rate = 50

[[tests]]
name = "2e"
title = "Endurance at 80 % of 2a's ceiling"
phase = 2
protocol = "tcp"
access = "balanced"
tier = "partner"
profile = "production"
governor = true
rate = "0.8 * 2a"
duration_s = 1800
"""

_TOP_KEYS = {"name", "poll_s", "target", "red_flags", "criteria", "tests"}
_TARGET_KEYS = {"local", "nodes", "balanced_http", "balanced_udp", "cacert", "admin_token_env",
                "keys"}
_NODE_KEYS = {"name", "admin", "http", "udp"}
_TEST_KEYS = {"name", "title", "phase", "protocol", "access", "tier", "profile", "governor",
              "levels", "rate", "duration_s", "report_rate", "keys", "criteria"}


def _fail(key: str, why: str) -> NoReturn:
    raise PlanError(f"{key}: {why}")


def _number(key: str, value: Any, *, low: float = 0.0, integer: bool = False,
            strict: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        _fail(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if value < low or (strict and value == low):
        _fail(key, f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def _text(key: str, value: Any, choices: Optional[tuple[str, ...]] = None) -> str:
    if not isinstance(value, str) or not value:
        _fail(key, f"expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        _fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    for key in table:
        if key not in known:
            _fail(f"{where}{key}", "unknown key")


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(key, f"expected a table, got {value!r}")
    return value


def _criteria(where: str, table: dict[str, Any], base: CriteriaSpec) -> CriteriaSpec:
    out = CriteriaSpec(**asdict(base))
    known = set(asdict(out))
    _unknown(where, table, known)
    for key, value in table.items():
        name = where + key
        if key == "expect":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                _fail(name, f"expected a list of error names, got {value!r}")
            from beastnet.loadgen.verdict import Expect
            try:
                Expect.parse(value)
            except LoadConfigError as exc:
                _fail(name, str(exc))
            out.expect = list(value)
        elif key == "machine_relative":
            if not isinstance(value, bool):
                _fail(name, f"expected true or false, got {value!r}")
            out.machine_relative = value
        elif key in ("success_through", "latency_from", "latency_through"):
            setattr(out, key, _number(name, value, low=1, integer=True))
        elif key == "min_success":
            if _number(name, value) > 1:
                _fail(name, f"must be 0..1, got {value!r}")
            out.min_success = float(value)
        else:
            setattr(out, key, float(_number(name, value, strict=True)))
    return out


def _levels(key: str, value: Any, scale: Scale) -> list[tuple[int, int]]:
    from beastnet.loadgen.ramp import DEFAULT_RAMP
    if value == "default":
        raw = [list(level) for level in DEFAULT_RAMP]
    elif isinstance(value, list) and value:
        raw = value
    else:
        _fail(key, f'expected "default" or a list of [requests, concurrency], got {value!r}')
    levels = []
    for i, level in enumerate(raw):
        if (not isinstance(level, list) or len(level) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                           for n in level)):
            _fail(f"{key}[{i}]", f"expected [requests, concurrency] (integers >= 1), got {level!r}")
        levels.append((max(1, level[0] // scale.divisor), max(1, level[1] // scale.divisor)))
    return levels[:scale.max_level]


def _rate(key: str, value: Any, earlier: list[str]) -> tuple[Optional[float], Any]:
    """A fixed rate in req/s, or "SHARE * TEST": a share of an earlier test's ceiling."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("*")]
        try:
            share = float(parts[0])
        except ValueError:
            share = math.nan
        if len(parts) != 2 or not 0 < share <= 1:
            _fail(key, f'expected req/s or "SHARE * TEST" (0 < SHARE <= 1), got {value!r}')
        if parts[1] not in earlier:
            _fail(key, f"{parts[1]!r} is not an earlier test of the plan")
        return None, (share, parts[1])
    return float(_number(key, value, strict=True)), None


def parse_plan(text: str, scale: str = "full", source: str = "plan") -> Plan:
    """The plan in `text` (TOML) at `scale`; PlanError names the first bad key."""
    if scale not in SCALES:
        raise PlanError(f"--scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{source}: not TOML ({exc})") from None
    _unknown("", doc, _TOP_KEYS)
    target = _target(_table("target", doc.get("target", {})))
    flags = RedFlags()
    rf = _table("red_flags", doc.get("red_flags", {}))
    _unknown("red_flags.", rf, set(asdict(flags)))
    for key, value in rf.items():
        setattr(flags, key, _number(f"red_flags.{key}", value,
                                    integer=isinstance(getattr(flags, key), int)))
    base = _criteria("criteria.", _table("criteria", doc.get("criteria", {})), CriteriaSpec())
    raw_tests = doc.get("tests")
    if not isinstance(raw_tests, list) or not raw_tests:
        _fail("tests", "the plan needs at least one [[tests]] table")
    tests: list[PlanTest] = []
    for i, raw in enumerate(raw_tests):
        tests.append(_test(f"tests[{i}].", _table(f"tests[{i}]", raw), sc, base,
                           [t.name for t in tests]))
    poll = float(_number("poll_s", doc.get("poll_s", 3.0), strict=True))
    return Plan(name=_text("name", doc.get("name", "plan")), scale=sc, target=target,
                tests=tests, red_flags=flags, poll_s=poll, source=text)


def _target(t: dict[str, Any]) -> TargetSpec:
    _unknown("target.", t, _TARGET_KEYS)
    spec = TargetSpec()
    if not isinstance(t.get("local", not t.get("nodes")), bool):
        _fail("target.local", f"expected true or false, got {t['local']!r}")
    spec.local = bool(t.get("local", not t.get("nodes")))
    for key in ("balanced_http", "balanced_udp", "cacert", "admin_token_env"):
        if key in t:
            setattr(spec, key, _text(f"target.{key}", t[key]))
    keys = _table("target.keys", t.get("keys", {}))
    spec.keys = {tier: _text(f"target.keys.{tier}", k) for tier, k in keys.items()}
    nodes = t.get("nodes", [])
    if not isinstance(nodes, list):
        _fail("target.nodes", f"expected a list of tables, got {nodes!r}")
    for i, node in enumerate(nodes):
        where = f"target.nodes[{i}]."
        _unknown(where, _table(where[:-1], node), _NODE_KEYS)
        for key in ("name", "admin"):
            if key not in node:
                _fail(where + key, "missing")
        spec.nodes.append({k: _text(where + k, v) for k, v in node.items()})
    if not spec.local and not spec.nodes:
        _fail("target.nodes", 'needed unless target.local = true')
    return spec


def _test(where: str, raw: dict[str, Any], sc: Scale, base: CriteriaSpec,
          earlier: list[str]) -> PlanTest:
    _unknown(where, raw, _TEST_KEYS)
    for key in ("name", "protocol", "access", "tier", "profile"):
        if key not in raw:
            _fail(where + key, "missing")
    name = _text(where + "name", raw["name"])
    if name in earlier:
        _fail(where + "name", f"{name!r} is used twice")
    governor = raw.get("governor", False)
    if not isinstance(governor, bool):
        _fail(where + "governor", f"expected true or false, got {governor!r}")
    test = PlanTest(
        name=name, title=_text(where + "title", raw.get("title", name)),
        protocol=_text(where + "protocol", raw["protocol"], PROTOCOLS),
        access=_text(where + "access", raw["access"], ACCESS),
        tier=_text(where + "tier", raw["tier"]), profile=_text(where + "profile", raw["profile"]),
        governor=governor, phase=_number(where + "phase", raw.get("phase", 1), low=1, integer=True),
        criteria=_criteria(where + "criteria.", _table(where + "criteria",
                                                      raw.get("criteria", {})), base))
    keys = raw.get("keys", test.keys)
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        _fail(where + "keys", f"expected a list of asset keys, got {keys!r}")
    test.keys = list(keys)
    if ("levels" in raw) == ("rate" in raw):
        _fail(where + "levels", "give either levels (a ramp) or rate (a fixed-rate run)")
    if "levels" in raw:
        test.levels = _levels(where + "levels", raw["levels"], sc)
    else:
        if "duration_s" not in raw:
            _fail(where + "duration_s", "missing (a fixed-rate test needs it)")
        test.rate, test.rate_of = _rate(where + "rate", raw["rate"], earlier)
        if test.rate is not None:
            test.rate = max(1.0, test.rate / sc.rate_divisor)
        test.duration_s = min(float(_number(where + "duration_s", raw["duration_s"],
                                            strict=True)), sc.fixed_s)
    if "report_rate" in raw:
        rate = float(_number(where + "report_rate", raw["report_rate"], strict=True))
        test.report_rate = max(1.0, rate / sc.rate_divisor)
    return test


def load_plan(path: Optional[str], scale: str = "full") -> Plan:
    """The plan file at `path` (None: the default plan) at `scale`."""
    if path is None:
        return parse_plan(DEFAULT_PLAN, scale, "the default plan")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise PlanError(f"{path}: {exc.strerror}") from None
    return parse_plan(text, scale, path)

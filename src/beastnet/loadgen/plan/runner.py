"""The plan runner: for each test, the pre-flight on every node, the load
(one, or two at once), a poll of `/admin/cluster-stats` beside it with the
red flags raised live, and the restore.

Pre-flight, per node: switch to the test's profile (`POST /admin/profile`),
the governor on or off when the node has one (`adaptive_enabled` among the
profile's live parameters), `POST /admin/reset`, then `/admin/stats` must
show every UDP and HTTP counter at zero (gauges such as open connections
aside).  Cluster stats carry monotonic counters (their rates are deltas), so
a reset cannot zero them: the runner takes them as the test's baseline and
judges each poll by its deltas.  A node that does not confirm stops that test,
with its reason; the next test tries again.

Ctrl-C (KeyboardInterrupt in the main thread) stops the load under way,
restores every node's profile as it was before the plan, and ends the plan
with what it has.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Optional

import orjson

from beastnet.errors import AgentsError, LoadError
from beastnet.loadgen.plan.spec import Plan, PlanTest, RedFlags
from beastnet.loadgen.targets import parse_target

__all__ = ["NodeTarget", "PlanRunner", "Poller", "red_flags_of"]

# A node's admin answers on its control loop, which the plan's own load on a
# small host starves for seconds at a time (a profile switch took over 2 s
# on the 2-core VM beside a test run): slow is not lost.
ADMIN_TIMEOUT_S = 5.0
RESTORE_ATTEMPTS = 3        # a profile restore the node did not answer is asked again
# The traffic counters of /admin/stats a reset must bring to zero (those the
# cluster snapshot carries, gauges aside); others, such as epoll wake-ups and
# stream publications, move with the feed whatever the clients do.
ZERO_AFTER_RESET = {
    "udp": ("rx_packets", "hits", "misses", "bad_requests", "queue_drops", "send_errors",
            "kernel_drops", "unauthorized", "rate_limited", "over_quota", "shed_public",
            "shed_partner"),
    "http": ("requests", "hits", "misses", "queue_drops", "parse_errors", "rejected",
             "unauthorized", "rate_limited", "over_quota", "shed_public", "shed_partner"),
}
Progress = Callable[[str], None]


class NodeError(Exception):
    """A node did not answer an admin request as it should: one line.
    `unreachable`: no answer at all (refused, timed out), which may pass."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class NodeTarget:
    name: str
    admin: str
    http: Optional[str] = None
    udp: Optional[str] = None
    pid: Optional[int] = None


def _rss(pid: Optional[int]) -> Optional[int]:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Admin:
    """The admin API of the nodes, each call bounded by ADMIN_TIMEOUT_S."""

    def __init__(self, token: Optional[str] = None) -> None:
        self.token = token

    def call(self, node: NodeTarget, method: str, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        req = urllib.request.Request(node.admin.rstrip("/") + path, method=method,
                                     headers=headers, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=ADMIN_TIMEOUT_S) as r:
                return orjson.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()[:200].decode(errors="replace")
            raise NodeError(f"{node.name}: {method} {path} answered {exc.code} {body}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeError(f"{node.name}: {method} {path}: unreachable ({reason})",
                            unreachable=True) from None


def red_flags_of(delta: dict[str, int], flags: RedFlags) -> list[tuple[str, float]]:
    """The red flags of one poll's counter deltas: (flag, value) pairs."""
    out: list[tuple[str, float]] = []
    hits = delta.get("udp_hits", 0) + delta.get("http_hits", 0)
    misses = delta.get("udp_misses", 0) + delta.get("http_misses", 0)
    if hits + misses and 100.0 * hits / (hits + misses) < flags.syncmap_hit_min_pct:
        out.append(("syncmap_hit", round(100.0 * hits / (hits + misses), 2)))
    rx, drops = delta.get("udp_rx_packets", 0), delta.get("udp_kernel_drops", 0)
    if rx + drops and 100.0 * drops / (rx + drops) > flags.udp_drop_max_pct:
        out.append(("udp_drop", round(100.0 * drops / (rx + drops), 2)))
    queue = delta.get("udp_queue_drops", 0) + delta.get("http_queue_drops", 0)
    if misses and 100.0 * queue / misses > flags.bg_drop_max_pct:
        out.append(("bg_drop", round(100.0 * queue / misses, 2)))
    if delta.get("usage_flush_errors", 0) > flags.flush_errors_max:
        out.append(("flush_errors", float(delta["usage_flush_errors"])))
    if delta.get("http_queue_drops", 0) > flags.http_5xx_max:      # answered 503 busy
        out.append(("5xx", float(delta["http_queue_drops"])))
    return out


def _delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items()}


class Poller:
    """Reads `/admin/cluster-stats` every `interval_s` on its own thread,
    from the first node that answers, and keeps a timeline: per poll the
    counter deltas, each node's state and RSS (nodes with a PID), and the
    red flags.  `on_flag` is called once for each flag's onset."""

    def __init__(self, admin: Admin, nodes: list[NodeTarget], flags: RedFlags,
                 interval_s: float, on_flag: Callable[[dict], None],
                 where: Callable[[], str]) -> None:
        self.admin, self.nodes, self.flags = admin, nodes, flags
        self.interval_s = interval_s
        self.on_flag = on_flag
        self.where = where
        self.rows: list[dict[str, Any]] = []
        self.raised: list[dict[str, Any]] = []
        self.failures = 0
        self.cpu_s = 0.0
        self._active: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._last_totals: Optional[dict[str, int]] = None
        self._last_nodes: dict[str, dict[str, int]] = {}
        self._rss0: dict[str, int] = {}
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.time()       # wall clock of the timeline's t = 0
        self._t0 = time.monotonic()
        self._read()                    # the baseline
        self._thread = threading.Thread(target=self._loop, name="plan-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(ADMIN_TIMEOUT_S * (len(self.nodes) + 1))
        self._read()                    # the last partial interval

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def _stats(self) -> Optional[dict[str, Any]]:
        for node in self.nodes:
            try:
                return dict(self.admin.call(node, "GET", "/admin/cluster-stats"))
            except NodeError:
                continue
        return None

    def _read(self) -> None:
        cpu0 = time.thread_time()
        stats = self._stats()
        # Stamped once the stats are in: a sample is what the nodes said at
        # that moment (stamped before the read, a flag seen in it could date
        # from before what raised it, as a test of a stopped node once saw).
        t = round(time.monotonic() - self._t0, 3)
        row: dict[str, Any] = {"t": t, "at": self.where(), "flags": []}
        if stats is None:
            self.failures += 1
            row["error"] = "no node answered /admin/cluster-stats"
            self.rows.append(row)
            self.cpu_s += time.thread_time() - cpu0
            return
        totals = stats.get("totals", {})
        per_node = {r["node"]: r for r in stats.get("per_node", [])}
        found: list[tuple[str, str, float]] = []
        if self._last_totals is not None:
            delta = _delta(totals, self._last_totals)
            row["delta"] = delta
            found += [("cluster", f, v) for f, v in red_flags_of(delta, self.flags)]
        nodes_out: dict[str, Any] = {}
        for node in self.nodes:
            r = per_node.get(node.name, {})
            state = r.get("state", "absent")
            info: dict[str, Any] = {"state": state}
            counters = r.get("counters")
            if counters is not None:
                if node.name in self._last_nodes:
                    nd = _delta(counters, self._last_nodes[node.name])
                    info["delta"] = nd
                    found += [(node.name, f, v) for f, v in red_flags_of(nd, self.flags)
                              if f in ("udp_drop", "bg_drop", "flush_errors", "5xx")]
                self._last_nodes[node.name] = counters
            rss = _rss(node.pid)
            gone = node.pid is not None and rss is None
            # Stale: the snapshot is late (a node whose control loop is
            # starved).  Lost: its process gone, absent from the nodes hash,
            # or its snapshot expired where we cannot see the process.  A
            # node we started whose process is alive but whose snapshot
            # expired is starved, not lost (a busy 2-core box starves a node
            # past the snapshot's TTL while it still serves).
            alive = rss is not None
            if gone or state == "absent" or (state == "missing" and not alive):
                found.append((node.name, "node_lost", 0.0))
            elif state in ("stale", "missing"):
                found.append((node.name, "node_stale", 0.0))
            if gone:
                info["state"] = "gone"
            elif rss is not None:
                info["rss_bytes"] = rss
                base = self._rss0.setdefault(node.name, rss)
                climb = 100.0 * (rss - base) / base if base else 0.0
                if climb > self.flags.memory_climb_max_pct:
                    found.append((node.name, "memory", round(climb, 1)))
            nodes_out[node.name] = info
        self._last_totals = totals
        row["nodes"] = nodes_out
        row["nodes_seen"] = stats.get("nodes")
        now = set()
        for scope, flag, value in found:
            key = (scope, flag)
            if key in now:
                continue
            now.add(key)
            entry = {"t": t, "at": row["at"], "scope": scope, "flag": flag, "value": value}
            row["flags"].append(entry)
            if key not in self._active:
                self.raised.append(entry)
                self.on_flag(entry)
        self._active = now
        self.rows.append(row)
        self.cpu_s += time.thread_time() - cpu0


class PlanRunner:
    """Runs a `Plan` against its target.  `nodes` are the nodes' admin and
    public addresses; `target` the rest (load balancers, CA, keys per
    tier).  `progress` gets each line of terminal progress."""

    def __init__(self, plan: Plan, nodes: list[NodeTarget], target: dict[str, Any],
                 progress: Progress = print, admin_token: Optional[str] = None,
                 poll_s: Optional[float] = None,
                 load_runner: Optional[Callable[..., Any]] = None) -> None:
        self.plan = plan
        # Load agents' coordinator (`agents.Coordinator.run`), else each kind's own runner.
        self.load_runner = load_runner
        self.nodes = nodes
        self.target = target
        self.progress = progress
        self.admin = Admin(admin_token)
        self.poll_s = poll_s or plan.poll_s
        self.results: dict[str, dict[str, Any]] = {}
        self.interrupted = False
        self._where = ""
        self._stop = threading.Event()
        self.original: dict[str, Any] = {}
        self.restores: list[dict[str, Any]] = []
        self.runner_cpu_s = 0.0
        self.load_s = 0.0

    # -- the plan ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every test in order; the report body (see `report.plan_report`)."""
        started = time.time()
        cpu0 = time.process_time()
        for node in self.nodes:
            try:
                self.original[node.name] = self.admin.call(node, "GET", "/admin/profile")
            except NodeError as exc:
                self.original[node.name] = {"error": str(exc)}
        try:
            for test in self.plan.tests:
                if self.interrupted:
                    self.results[test.name] = self._skipped(test, "not run: interrupted")
                    continue
                self.results[test.name] = self._run_test(test)
        except KeyboardInterrupt:
            self.interrupted = True
            self._stop.set()
        finally:
            previous = signal.getsignal(signal.SIGINT)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # the restore runs to its end
            try:
                self._restore("end of plan" if not self.interrupted else "interrupted")
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, previous)
        for test in self.plan.tests:
            self.results.setdefault(test.name, self._skipped(test, "not run: interrupted"))
        return {"started_at": started, "duration_s": round(time.time() - started, 1),
                "interrupted": self.interrupted, "original_profiles": self.original,
                "restores": self.restores,
                "runner_cpu_s": round(time.process_time() - cpu0, 3),
                "tests": [self.results[t.name] for t in self.plan.tests]}

    @staticmethod
    def _skipped(test: PlanTest, why: str) -> dict[str, Any]:
        return {"name": test.name, "title": test.title, "phase": test.phase, "verdict": "skip",
                "reasons": [why], "test": _test_dict(test)}

    def _say(self, text: str) -> None:
        self.progress(text)

    # -- one test ----------------------------------------------------------------------

    def _run_test(self, test: PlanTest) -> dict[str, Any]:
        out: dict[str, Any] = {"name": test.name, "title": test.title, "phase": test.phase,
                               "test": _test_dict(test), "reasons": []}
        self._where = f"{test.name} pre-flight"
        self._say(f"== {test.name}: {test.title} ({test.protocol} {test.access}, tier "
                  f"{test.tier}, profile {test.profile}, governor "
                  f"{'on' if test.governor else 'off'})")
        preflight = self._preflight(test)
        out["preflight"] = preflight
        if preflight["stopped"]:
            out["verdict"] = "fail"
            out["reasons"] = [f"pre-flight: {preflight['stopped']}"]
            self._say(f"   {test.name}: stopped at pre-flight: {preflight['stopped']}")
            return out
        poller = Poller(self.admin, self.nodes, self.plan.red_flags, self.poll_s,
                        self._on_flag, lambda: self._where)
        try:
            poller.start()
            load = self._load(test, out)
        finally:
            poller.stop()
            self.runner_cpu_s += poller.cpu_s
        out["timeline"] = poller.rows
        out["poll_started_at"] = poller.started_at
        out["flags"] = poller.raised
        out["poll_failures"] = poller.failures
        out["poller_cpu_s"] = round(poller.cpu_s, 4)
        out.update(load)
        verdict = out.get("verdict", "fail")
        if poller.raised and verdict == "pass":
            verdict = "warn"
        for flag in poller.raised:
            out["reasons"].append(f"red flag {flag['flag']} on {flag['scope']} at "
                                  f"{flag['t']:.1f} s ({flag['at']})")
        out["verdict"] = verdict
        self._restore(f"after {test.name}")
        self._say(f"   {test.name}: {verdict.upper()}"
                  + (f": {out['reasons'][0]}" if out["reasons"] else ""))
        return out

    def _on_flag(self, entry: dict[str, Any]) -> None:
        value = f" {entry['value']}" if entry["value"] else ""
        self._say(f"   ! red flag {entry['flag']}{value} on {entry['scope']} at "
                  f"{entry['t']:.1f} s ({entry['at']})")

    def _preflight(self, test: PlanTest) -> dict[str, Any]:
        """Profile, governor, reset, zero check on every node.  `stopped` is
        the first node's reason when one did not confirm."""
        steps: list[dict[str, Any]] = []
        governor: dict[str, str] = {}
        for node in self.nodes:
            try:
                self.admin.call(node, "POST", "/admin/profile?name="
                                + urllib.parse.quote(test.profile))
                governor[node.name] = self._governor(node, test.governor)
                self.admin.call(node, "POST", "/admin/reset")
                nonzero = _nonzero(self.admin.call(node, "GET", "/admin/stats"))
                if nonzero:
                    raise NodeError(f"{node.name}: counters not zero after reset: "
                                    + ", ".join(nonzero[:4]))
                steps.append({"node": node.name, "ok": True})
            except NodeError as exc:
                steps.append({"node": node.name, "ok": False, "reason": str(exc)})
                return {"nodes": steps, "stopped": str(exc), "governor": governor}
        return {"nodes": steps, "stopped": None, "governor": governor}

    def _governor(self, node: NodeTarget, on: bool) -> str:
        """The node's governor on or off through its profile's live parameter
        `adaptive_enabled`: kept when the profile just applied already sets
        it so, else set with the profile switch; a node without the
        parameter says so."""
        def state() -> Any:
            answer = self.admin.call(node, "GET", "/admin/profile") or {}
            return answer.get("profile"), (answer.get("live") or {}).get("adaptive_enabled")
        profile, live = state()
        if live is None:
            return "not available on this node"
        if bool(live) != on:
            self.admin.call(node, "POST", "/admin/profile?name="
                            + urllib.parse.quote(str(profile))
                            + f"&adaptive_enabled={'true' if on else 'false'}")
            if bool(state()[1]) != on:
                raise NodeError(f"{node.name}: the governor did not switch "
                                f"{'on' if on else 'off'} (adaptive_enabled)")
        return "on" if on else "off"

    def _restore(self, when: str) -> None:
        for node in self.nodes:
            before = self.original.get(node.name) or {}
            profile = before.get("profile")
            if not profile:
                continue
            entry: dict[str, Any] = {"when": when, "node": node.name, "profile": profile}
            # A node busy past the admin timeout right after a test is asked
            # again: a restore left undone leaves it on a stress profile.
            for attempt in range(1, RESTORE_ATTEMPTS + 1):
                try:
                    self.admin.call(node, "POST", "/admin/profile?name="
                                    + urllib.parse.quote(profile))
                    entry.update(ok=True, attempts=attempt)
                    entry.pop("reason", None)
                    break
                except NodeError as exc:
                    entry.update(ok=False, reason=str(exc), attempts=attempt)
                    self._say(f"   restore: {exc}")
                    if not exc.unreachable:
                        break           # the node answered no: asking again changes nothing
                    if attempt < RESTORE_ATTEMPTS:
                        time.sleep(0.5 * attempt)
            self.restores.append(entry)

    # -- the loads ---------------------------------------------------------------------

    def _base(self, test: PlanTest, *, prefix: Optional[str] = None,
              keys: Optional[list[str]] = None) -> Any:
        from beastnet.loadgen.config import HTTPLoadConfig, UDPLoadConfig
        api_key = (self.target.get("keys") or {}).get(test.tier)
        keys = keys or test.keys
        common: dict[str, Any] = {"keys": keys, "api_key": api_key, "threads": 1,
                                  "timeout_ms": 1000.0, "warmup_s": 0.0}
        if test.protocol == "udp":
            where = (self.target.get("balanced_udp") if test.access == "balanced"
                     else self.nodes[0].udp)
            if not where:
                raise NodeError(f"no UDP address for access {test.access}")
            host, _, port = where.rpartition(":")
            return UDPLoadConfig(host=host, port=int(port), sockets=16, **common)
        url = (self.target.get("balanced_http") if test.access == "balanced"
               else self.nodes[0].http)
        if not url:
            raise NodeError(f"no HTTP address for access {test.access}")
        http = parse_target(url)            # its port and path defaults by scheme
        if http.kind.config_class() is not HTTPLoadConfig:
            raise NodeError(f"{url}: expected an http:// or https:// URL")
        tls = http.kind.tls
        return HTTPLoadConfig(host=http.host, port=http.port,
                              path_prefix=prefix or http.path, tls=tls,
                              cacert=self.target.get("cacert") if tls else None,
                              connections=16, **common)

    def _criteria(self, test: PlanTest) -> Any:
        from beastnet.loadgen.ramp import Criteria
        from beastnet.loadgen.verdict import Expect
        c = test.criteria
        return Criteria(success_through=c.success_through, min_success=c.min_success,
                        latency_from=c.latency_from, latency_through=c.latency_through,
                        p50_ms=c.p50_ms, p99_ms=c.p99_ms, expect=Expect.parse(c.expect),
                        machine_relative=c.machine_relative)

    def _load(self, test: PlanTest, out: dict[str, Any]) -> dict[str, Any]:
        from beastnet.loadgen.ramp import judge_run, ramp_load, runner_for
        try:
            base = self._base(test)
        except NodeError as exc:
            return {"verdict": "fail", "reasons": [str(exc)]}
        report_load = self._start_report_load(test) if test.report_rate else None
        t0 = time.monotonic()
        total = self._planned_s(test)

        def tick(row: dict) -> None:
            elapsed = time.monotonic() - t0
            left = f", about {max(0.0, total - elapsed):.0f} s left" if total else ""
            self._say(f"   {self._where}: {elapsed:.0f} s{left}, "
                      f"{row.get('received', 0):,} answered in the last second")

        def stop_when(_row: dict) -> bool:
            return self._stop.is_set()
        result: dict[str, Any] = {}
        try:
            if test.ramp:
                from beastnet.loadgen.ramp import Level
                levels = [Level(i + 1, r, c) for i, (r, c) in enumerate(test.levels)]

                def before(level: Level) -> None:
                    self._where = f"{test.name} level {level.number}/{len(levels)}"
                    self._say(f"   {self._where}: {level.requests:,} requests, "
                              f"{level.concurrency:,} in flight")
                report = ramp_load(base, levels, self._criteria(test), max_seconds=60.0,
                                   stop_at_break=True, progress=tick, stop_when=stop_when,
                                   before_level=before, runner=self.load_runner)
                result["ramp"] = report.to_dict()
                result["verdict"] = report.verdict
                # The failing levels' reasons; when none failed, the warnings'.
                worst = "fail" if report.verdict == "fail" else "warn"
                result["reasons"] = [f"level {lv.level.number}: {r}" for lv in report.levels
                                     for r in lv.reasons if lv.verdict == worst]
                if report.interrupted:
                    self.interrupted = True
            else:
                rate = self._fixed_rate(test)
                if rate is None:
                    return {"verdict": "fail", "reasons": [
                        f"{test.rate_of[1] if test.rate_of else '?'} has no ceiling "
                        f"(it did not run or answered nothing)"]}
                self._where = f"{test.name} {rate:,.0f} req/s"
                cfg = base.at_rate(rate, test.duration_s or 1.0)
                if test.protocol == "tcp":
                    # Open loop needs room for rate x latency in flight: 16
                    # connections one request at a time would hold the
                    # schedule back (counted as never sent) at 16 / latency.
                    cfg = dataclasses.replace(cfg, connections=64, pipeline=8)
                run = self.load_runner or runner_for(cfg)
                r = run(cfg, progress=tick, stop_when=stop_when)
                verdict, reasons = judge_run(r, max_p99_ms=test.criteria.p99_ms,
                                             min_success=test.criteria.min_success,
                                             expect=self._criteria(test).expect)
                result.update(run=r.to_dict(), rate=rate, verdict=verdict, reasons=reasons)
                result["endurance"] = _slope(r.timeline)
                if r.interrupted:
                    self.interrupted = True
        except AgentsError:
            raise                   # no agents to run any test on: the plan stops
        except LoadError as exc:
            # This test's load could not run (no TLS handshake worked, a
            # generator thread failed): its verdict, and the next test runs.
            result.update(verdict="fail", reasons=[f"the load run failed: {exc}"])
            self._say(f"   {self._where}: the load run failed: {exc}")
        finally:
            self.load_s += time.monotonic() - t0
            if report_load is not None:
                result["reports"] = report_load.finish()
        if result.get("reports") and result["reports"].get("verdict") == "fail":
            result["verdict"] = "fail"
            result["reasons"] = result.get("reasons", []) + [
                "reports: " + "; ".join(result["reports"].get("reasons", []))]
        return result

    def _planned_s(self, test: PlanTest) -> float:
        return float(test.duration_s or 0.0)

    def _fixed_rate(self, test: PlanTest) -> Optional[float]:
        if test.rate is not None:
            return test.rate
        assert test.rate_of is not None
        share, name = test.rate_of
        ceiling = _ceiling(self.results.get(name))
        return None if not ceiling else share * ceiling

    def _start_report_load(self, test: PlanTest) -> "ReportLoad":
        return ReportLoad(self, test)


class ReportLoad:
    """The usage-report load of a combined test, on its own thread at
    `report_rate`, until the price load ends.  A node without the report
    routes (404) makes it "not available", with the reason."""

    def __init__(self, runner: PlanRunner, test: PlanTest) -> None:
        self.runner = runner
        self.test = test
        self.result: dict[str, Any] = {}
        self.done = threading.Event()
        self.thread: Optional[threading.Thread] = None
        probe = self._probe()
        if probe is not None:
            self.result = {"verdict": "not available", "reasons": [probe]}
            return
        self.thread = threading.Thread(target=self._run, name="plan-reports", daemon=True)
        self.thread.start()

    def _probe(self) -> Optional[str]:
        base = self.runner._base(self.test, prefix="/v1/reports/", keys=["usage"])
        tls = getattr(base, "tls", False)
        url = f"{'https' if tls else 'http'}://{base.host}:{base.port}/v1/reports/usage"
        ctx = ssl.create_default_context(cafile=base.cacert) if tls else None
        req = urllib.request.Request(url, headers={"X-API-Key": base.api_key or ""})
        try:
            with urllib.request.urlopen(req, timeout=ADMIN_TIMEOUT_S, context=ctx):
                return None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return "not available: GET /v1/reports/usage answered 404 (this node has no " \
                       "usage-report routes)"
            return None                     # answered: the load judges the statuses
        except OSError as exc:
            return f"not available: GET /v1/reports/usage: {getattr(exc, 'reason', exc)}"

    def _run(self) -> None:
        from beastnet.loadgen.ramp import judge_run, runner_for
        try:
            base = self.runner._base(self.test, prefix="/v1/reports/", keys=["usage"])
            assert self.test.report_rate is not None
            cfg = base.at_rate(self.test.report_rate, 3600.0)
            r = runner_for(cfg)(cfg, stop_when=lambda _row: self.done.is_set())
            r.interrupted = False           # stopped by the price load's end, by design
            verdict, reasons = judge_run(r, max_p99_ms=self.test.criteria.p99_ms,
                                         min_success=self.test.criteria.min_success)
            reasons = [x for x in reasons if "stopped early" not in x]
            self.result = {"verdict": "fail" if reasons else "pass", "reasons": reasons,
                           "run": r.to_dict()}
        except Exception as exc:            # a thread must hand its failure back
            self.result = {"verdict": "fail", "reasons": [f"report load: {exc}"]}

    def finish(self) -> dict[str, Any]:
        self.done.set()
        if self.thread is not None:
            self.thread.join(10.0)
        return self.result


def _nonzero(stats: dict[str, Any]) -> list[str]:
    out = []
    for proto, names in ZERO_AFTER_RESET.items():
        totals = (stats.get(proto) or {}).get("totals") or {}
        out += [f"{proto}.{k}={totals[k]}" for k in names if totals.get(k)]
    return out


def _ceiling(result: Optional[dict[str, Any]]) -> Optional[float]:
    """A ramp test's ceiling: the best throughput of a level that did not fail."""
    if not result or "ramp" not in result:
        return None
    levels = result["ramp"]["levels"]
    good = [lv["result"]["rps"] for lv in levels if lv["verdict"] != "fail"]
    best = max(good or [lv["result"]["rps"] for lv in levels] or [0.0])
    return float(best) or None


def _slope(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares slope of the per-second p50 and p99 (ms per minute)."""
    out: dict[str, Any] = {}
    rows = [r for r in timeline if not r.get("warmup")]
    for q in ("p50", "p99"):
        pts = [(r["t"], r[f"{q}_ns"] / 1e6) for r in rows if r.get(f"{q}_ns") is not None]
        out[f"{q}_ms_per_min"] = _fit(pts)
    return out


def _fit(pts: list[tuple[float, float]]) -> Optional[float]:
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return round(slope * 60.0, 4) if math.isfinite(slope) else None


def _test_dict(test: PlanTest) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(test)

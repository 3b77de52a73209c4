"""The WebSocket stress ladder: eight levels of connections (10 to 99,000),
every connection following the same symbols, one `run_ws_load` per level.
Each level is judged per metric against pass / warn / fail thresholds
(`StressThresholds`), its broadcast run also by the rules of every WebSocket
run (`verdict.judge_ws`: gaps, stalls, reconnects, errors), and the ladder gets a degradation analysis: for each
dimension, 1 - best/worst across the levels that ran, and the dimension
that degraded most is named.

A level this machine cannot open (file descriptors, ephemeral ports) is
`skipped` with the reason; it is never counted as passed, and a ladder with
a skipped level is at best `warn`.

Besides the broadcast run, each level runs, one after the other, with the
level's connections (`StressProbes` says what is sent):
  - message round trip: a request (beastnet: a snapshot of the first
    symbol; or an echo endpoint) and its answer, timed;
  - subscribe/unsubscribe: subscribe, await the ack, unsubscribe, await
    the ack, again; acknowledged operations per second and their p95;
  - permission checks: with a key not allowed the feed, every upgrade must
    be refused (beastnet: 403), or with a subscribe message the server must
    refuse, every answer must hold the refusal pattern; one grant fails;
  - compression: permessage-deflate offered; bytes saved and the client's
    inflate time, and with ``server_stats`` (a beastnet server's admin URL)
    the server's deflates and their CPU over the same run, per publication
    and per delivered message.  A server that does not negotiate it makes the
    dimension `skipped` with that reason, never passed.
A dimension that cannot run (no denied key given) is listed under
``not_measured`` with its reason.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from beastnet.loadgen.ws.config import WSLoadConfig
from beastnet.loadgen.ws.knee import reach_problem
from beastnet.loadgen.ws.verdict import WSCriteria, judge_ws

__all__ = ["DIMENSIONS", "LEVELS", "QUICK_MAX_LEVEL", "StressProbes", "StressThresholds",
           "run_stress", "server_deflate_counters"]

#: Connections of each level, 1 to 8.
LEVELS = (10, 100, 500, 1000, 5000, 10000, 50000, 99000)
QUICK_MAX_LEVEL = 4
#: The probe dimensions, in the order each level runs them.
DIMENSIONS = ("round_trip", "subscribe", "permission", "compression")
_TITLES = {"round_trip": "message round trip", "subscribe": "subscribe/unsubscribe rate",
           "permission": "permission checks", "compression": "compression"}
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class StressThresholds:
    """(warn, fail) limits per metric; a value past `fail` fails the level."""

    upgrade_p95_ms: tuple[float, float] = (100.0, 1000.0)
    delivery_p95_ms: tuple[float, float] = (50.0, 200.0)
    delivery_p99_ms: tuple[float, float] = (100.0, 500.0)
    #: Share of connections upgraded; below warn warns, below fail fails.
    connected: tuple[float, float] = (1.0, 0.99)
    round_trip_p95_ms: tuple[float, float] = (50.0, 200.0)
    round_trip_p99_ms: tuple[float, float] = (100.0, 500.0)
    #: Subscribe and unsubscribe acknowledgements.
    subscribe_p95_ms: tuple[float, float] = (50.0, 200.0)
    #: Refusals (of the upgrade or the subscribe) of a key not allowed.
    refusal_p95_ms: tuple[float, float] = (50.0, 200.0)
    #: Client inflate time per KiB inflated.
    inflate_us_per_kib: tuple[float, float] = (20.0, 100.0)
    #: Share of the bytes compression saved; below warn warns, below fail fails.
    compression_saved: tuple[float, float] = (0.2, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StressProbes:
    """What the probe dimensions send.  ``{symbols}`` in a message becomes
    the JSON array of the first symbol.  A pattern is found in the first
    bytes of an answer ('' = the next message is the answer)."""

    round_trip_message: str = '{"op":"snapshot","symbols":{symbols}}'
    round_trip_answer: str = ""
    #: Another path for the round trip (an echo endpoint), None = the feed's.
    round_trip_path: Optional[str] = None
    unsubscribe_template: str = '{"op":"unsubscribe","symbols":{symbols}}'
    subscribe_ack: str = '"op":"subscribed"'
    unsubscribe_ack: str = '"op":"unsubscribed"'
    #: An API key not allowed the feed: every upgrade with it must be refused.
    denied_key: Optional[str] = None
    #: Or a subscribe message the server must refuse (an answer holding `refusal`).
    denied_subscribe: Optional[str] = None
    refusal: str = '"error"'
    #: Connections of the compression run: at most this many (zlib keeps
    #: ~40 KiB of inflate state per connection).
    compression_connections: int = 1000
    #: A beastnet server's admin listener (http://HOST:PORT): its deflate
    #: counters are read before and after the compression run.
    server_stats: Optional[str] = None
    server_stats_token: Optional[str] = None
    dimensions: Sequence[str] = DIMENSIONS

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dimensions"] = list(self.dimensions)
        return out


def _worse(a: str, b: str) -> str:
    return max(a, b, key=_ORDER.__getitem__)


def _judge(metrics: dict[str, Optional[float]], th: StressThresholds,
           names: Sequence[str] = ("upgrade_p95_ms", "delivery_p95_ms", "delivery_p99_ms"),
           floors: Sequence[str] = ("connected",)) -> tuple[str, list[str]]:
    """Upper limits on `names`, lower limits on `floors` (a share)."""
    verdict, reasons = "pass", []
    for name in names:
        warn, fail = getattr(th, name)
        v = metrics[name]
        if v is None:
            verdict = max(verdict, "warn", key=_ORDER.__getitem__)
            reasons.append(f"{name}: not measured")
        elif v > fail:
            verdict = "fail"
            reasons.append(f"{name} {v:.2f} > {fail:g}")
        elif v > warn:
            verdict = max(verdict, "warn", key=_ORDER.__getitem__)
            reasons.append(f"{name} {v:.2f} > {warn:g} (warn)")
    for name in floors:
        warn, fail = getattr(th, name)
        share = metrics[name] or 0.0
        if share < fail:
            verdict = "fail"
            reasons.append(f"{name} {share:.2%} < {fail:.0%}")
        elif share < warn:
            verdict = max(verdict, "warn", key=_ORDER.__getitem__)
            reasons.append(f"{name} {share:.2%} < {warn:.0%} (warn)")
    return verdict, reasons


# The dimensions of the degradation analysis; True: higher is better.
_DEGRADATION = (("messages_per_s_per_connection", True), ("upgrade_p95_ms", False),
                ("delivery_p95_ms", False), ("round_trip_p95_ms", False),
                ("subscribe_ops_per_s_per_connection", True), ("refusal_p95_ms", False),
                ("inflate_us_per_kib", False))


def degradation(levels: Sequence[dict]) -> dict[str, Any]:
    """1 - best/worst per dimension over the levels that ran (0 = flat,
    near 1 = collapsed), and the dimension that degraded most."""
    ran = [lv for lv in levels if lv["verdict"] != "skipped"]
    dims: dict[str, Optional[float]] = {}
    # Higher is better for throughput per connection, lower for latencies.
    for name, higher_better in _DEGRADATION:
        values = [lv["metrics"].get(name) for lv in ran if lv["metrics"].get(name)]
        if len(values) < 2:
            dims[name] = None
            continue
        best, worst = (max(values), min(values)) if higher_better else (min(values),
                                                                        max(values))
        dims[name] = 1.0 - (worst / best if higher_better else best / worst)
    known = {k: v for k, v in dims.items() if v is not None}
    return {"by_dimension": dims,
            "most_degraded": max(known, key=known.__getitem__) if known else None}


def _probe_config(cfg: WSLoadConfig, n: int, **kw: Any) -> WSLoadConfig:
    """`cfg` for a probe run of `n` connections: no subscribe, no stamps."""
    kw.setdefault("subscribe_template", "")
    return dataclasses.replace(cfg, connections=n, ts_key=None, seq_key=None, **kw)


def _no_answers(e: dict, what: str) -> list[str]:
    return [] if e["probe_answers"] else [f"no {what} answered ({e['probes_sent']} sent, "
                                          f"{e['probe_timeouts']} timed out)"]


#: (verdict, reasons, metrics, the distribution drawn in the HTML report).
Dimension = tuple[str, list[str], dict[str, Any], Optional[dict]]


def _round_trip(run: Callable, cfg: WSLoadConfig, n: int, pr: StressProbes,
                th: StressThresholds, sym: str) -> Dimension:
    r = run(_probe_config(cfg, n, path=pr.round_trip_path or cfg.path,
                          probe_messages=[pr.round_trip_message.replace("{symbols}", sym)],
                          probe_answers=[pr.round_trip_answer]))
    e = r.extra
    m = {"round_trip_p50_ms": e["probe_ms"]["p50"], "round_trip_p95_ms": e["probe_ms"]["p95"],
         "round_trip_p99_ms": e["probe_ms"]["p99"], "round_trips_per_s": e["probe_answers_per_s"],
         "round_trip_timeouts": e["probe_timeouts"]}
    verdict, reasons = _judge(m, th, ("round_trip_p95_ms", "round_trip_p99_ms"), ())
    missing = _no_answers(e, "round trip")
    return ("fail" if missing else verdict), missing + reasons, m, e["probe_histogram"]


def _subscribe(run: Callable, cfg: WSLoadConfig, n: int, pr: StressProbes,
               th: StressThresholds, sym: str) -> Dimension:
    r = run(_probe_config(cfg, n, probe_messages=[
        (cfg.subscribe_template or "").replace("{symbols}", sym),
        pr.unsubscribe_template.replace("{symbols}", sym)],
        probe_answers=[pr.subscribe_ack, pr.unsubscribe_ack]))
    e = r.extra
    m = {"subscribe_ops_per_s": e["probe_answers_per_s"],
         "subscribe_ops_per_s_per_connection": e["probe_answers_per_s"] / n,
         "subscribe_p50_ms": e["probe_ms"]["p50"], "subscribe_p95_ms": e["probe_ms"]["p95"],
         "subscribe_timeouts": e["probe_timeouts"]}
    verdict, reasons = _judge(m, th, ("subscribe_p95_ms",), ())
    missing = _no_answers(e, "subscribe/unsubscribe")
    return ("fail" if missing else verdict), missing + reasons, m, e["probe_histogram"]


def _permission(run: Callable, cfg: WSLoadConfig, n: int, pr: StressProbes,
                th: StressThresholds, sym: str) -> Dimension:
    if pr.denied_key is not None:
        # Refused upgrades are retried at once (a 1 ms full-jitter backoff):
        # each connection keeps asking.
        r = run(_probe_config(cfg, n, api_key=pr.denied_key, backoff_base_ms=1.0,
                              backoff_cap_ms=1.0))
        e = r.extra
        refusals, granted = e["upgrade_forbidden"], e["upgrades"]
        other, p95 = e["upgrades_refused"] - refusals, e["refusal_ms"]["p95"]
        how, hist = "upgrade refused 403", e.get("refusal_histogram")
    else:
        r = run(_probe_config(cfg, n, probe_messages=[
            (pr.denied_subscribe or "").replace("{symbols}", sym)], probe_answers=[""],
            refusal_pattern=pr.refusal))
        e = r.extra
        refusals, granted = e["probe_refused"], e["probe_answers"] - e["probe_refused"]
        other, p95 = 0, e["probe_ms"]["p95"]
        how, hist = f"answer holding {pr.refusal}", e["probe_histogram"]
    span = r.duration_s
    m = {"refusals": refusals, "refusals_per_s": refusals / span if span > 0 else 0.0,
         "refusal_p95_ms": p95, "wrongly_granted": granted, "other_refusals": other,
         "refusal_rule": how}
    verdict, reasons = _judge(m, th, ("refusal_p95_ms",), ())
    if granted:
        verdict = "fail"
        reasons.insert(0, f"{granted} granted to a key or request that must be refused")
    if not refusals:
        verdict = "fail"
        reasons.insert(0, f"no refusal observed ({how})")
    if other:
        verdict = _worse(verdict, "warn")
        reasons.append(f"{other} upgrades refused with another status than 403")
    return verdict, reasons, m, hist


#: The compression dimension's reason when deflate was agreed but no message came compressed.
NOTHING_COMPRESSED = ("permessage-deflate negotiated, but every message came uncompressed "
                      "(none reached the server's compression threshold)")


_DEFLATE_COUNTERS = ("ws_deflated", "ws_deflate_cpu_ns", "ws_deflate_bytes_in",
                     "ws_deflate_bytes_out")


def server_deflate_counters(pr: StressProbes) -> Optional[dict[str, int]]:
    """The server's deflate counters now (None without ``server_stats``)."""
    if pr.server_stats is None:
        return None
    import urllib.error

    from beastnet.errors import LoadConfigError
    from beastnet.loadgen.serverstats import ServerStatsSampler
    sampler = ServerStatsSampler(pr.server_stats, pr.server_stats_token)
    try:
        http = sampler.read().get("http", {})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LoadConfigError(f"--server-stats {sampler.url}: {exc}") from None
    return {k: http.get(k, 0) for k in _DEFLATE_COUNTERS}


def _compression(run: Callable, cfg: WSLoadConfig, n: int, pr: StressProbes,
                 th: StressThresholds, sym: str) -> Dimension:
    conns = min(n, pr.compression_connections)
    before = server_deflate_counters(pr)
    r = run(dataclasses.replace(cfg, connections=conns, deflate=True))
    after = server_deflate_counters(pr)
    e = r.extra
    if not e["deflate_negotiated"]:
        return "skipped", ["server did not negotiate permessage-deflate"], {}, None
    inflated = e["inflated_bytes"]
    m = {"compression_connections": conns, "compressed_messages": e["compressed_messages"],
         "deflated_bytes": e["deflated_bytes"], "inflated_bytes": inflated,
         "compression_saved": 1.0 - e["deflated_bytes"] / inflated if inflated else None,
         "inflate_us_per_kib": e["inflate_ns"] / 1e3 / (inflated / 1024) if inflated else None,
         "client_cpu_ns_per_message": r.cpu_s * 1e9 / r.received if r.received else None}
    if before is not None and after is not None:
        # Deflate runs once per publication on the server's publishing side,
        # whatever the number of subscribers: per delivered message it is
        # that cost shared out.
        d = {k: after[k] - before[k] for k in _DEFLATE_COUNTERS}
        m.update(server_deflated=d["ws_deflated"],
                 server_deflate_us_per_publication=d["ws_deflate_cpu_ns"] / 1e3 /
                 d["ws_deflated"] if d["ws_deflated"] else None,
                 server_deflate_ns_per_message=d["ws_deflate_cpu_ns"] / r.received
                 if r.received else None)
    hist = r.histogram.to_dict()
    if not inflated:
        # RFC 7692 lets a server send any message plain; beastnet sends plain
        # every body under its compress_min_bytes.  Nothing was compressed, so
        # nothing about compression was measured: not a pass, not a failure.
        return "skipped", [NOTHING_COMPRESSED], {}, None
    return (*_judge(m, th, ("inflate_us_per_kib",), ("compression_saved",)), m, hist)


_RUNNERS: dict[str, Callable[..., Dimension]] = {
    "round_trip": _round_trip, "subscribe": _subscribe, "permission": _permission,
    "compression": _compression}


def _plan(cfg: WSLoadConfig, probes: StressProbes) -> tuple[list[str], list[str]]:
    """The dimensions to run, and what is not measured (with why)."""
    dims, missing = [], []
    for name in DIMENSIONS:
        if name not in probes.dimensions:
            missing.append(f"{_TITLES[name]} (not selected)")
        elif name == "subscribe" and not (cfg.subscribe_template and
                                          probes.unsubscribe_template):
            missing.append(f"{_TITLES[name]} (no subscribe or unsubscribe message)")
        elif name == "permission" and probes.denied_key is None \
                and probes.denied_subscribe is None:
            missing.append(f"{_TITLES[name]} (no denied key or denied subscribe message given)")
        else:
            dims.append(name)
    return dims, missing


def run_stress(cfg: WSLoadConfig, levels: Sequence[int] = LEVELS,
               thresholds: Optional[StressThresholds] = None,
               progress: Optional[Callable[[dict], None]] = None,
               on_level: Optional[Callable[[dict], None]] = None,
               probes: Optional[StressProbes] = None,
               criteria: Optional[WSCriteria] = None) -> dict[str, Any]:
    """Report body (kind ``ws-stress``): per level its connections, metrics,
    verdict and reasons (``skipped`` with the reason when out of reach), each
    probe dimension's verdict, reasons and metrics, the degradation analysis,
    ``not_measured``, and the overall verdict."""
    import orjson

    from beastnet.loadgen.ws.run import run_ws_load
    th = thresholds or StressThresholds()
    pr = probes or StressProbes()
    # The broadcast run of each level is judged as every WebSocket run is
    # (gaps, stalls, reconnects, errors); its latency by the thresholds.
    crit = criteria or WSCriteria(p99_ms=math.inf)
    dims, not_measured = _plan(cfg, pr)
    sym = orjson.dumps(list(cfg.symbols)[:1]).decode()

    def run(c: WSLoadConfig) -> Any:
        return run_ws_load(c, progress=progress)

    out: list[dict[str, Any]] = []
    for number, n in enumerate(levels, 1):
        problem = reach_problem(n)
        if problem is not None:
            out.append({"level": number, "connections": n, "verdict": "skipped",
                        "reasons": [problem], "metrics": {}, "dimensions": {}})
            continue
        r = run(dataclasses.replace(cfg, connections=n))
        e = r.extra
        p95, p99 = r.percentile(95), r.percentile(99)
        metrics: dict[str, Any] = {
            "connected": e["upgrades"] and min(1.0, (e["upgrades"] - e["reconnects"]) / n),
            "upgrade_p95_ms": e["upgrade_ms"]["p95"],
            "connect_p95_ms": e["connect_ms"]["p95"],
            "delivery_p95_ms": None if p95 != p95 else p95 / 1e6,
            "delivery_p99_ms": None if p99 != p99 else p99 / 1e6,
            "messages_per_s": e["messages_per_s"],
            "messages_per_s_per_connection": e["messages_per_s"] / n,
            "reconnects": e["reconnects"],
            "errors": r.errors,
        }
        verdict, reasons = _judge(metrics, th)
        run_verdict, run_reasons = judge_ws(r, crit)
        verdict, reasons = _worse(verdict, run_verdict), run_reasons + reasons
        interrupted = r.interrupted
        per_dim: dict[str, Any] = {}
        for name in dims if not interrupted else ():
            d_verdict, d_reasons, d_metrics, d_hist = _RUNNERS[name](run, cfg, n, pr, th, sym)
            per_dim[name] = {"verdict": d_verdict, "reasons": d_reasons, "metrics": d_metrics,
                             "histogram": d_hist}
            metrics.update(d_metrics)
            # A dimension skipped (the server lacks the feature) is no pass.
            verdict = _worse(verdict, "warn" if d_verdict == "skipped" else d_verdict)
            reasons += [f"{name}: {'skipped: ' if d_verdict == 'skipped' else ''}{x}"
                        for x in d_reasons]
        level = {"level": number, "connections": n, "verdict": verdict, "reasons": reasons,
                 "metrics": metrics, "dimensions": per_dim,
                 "result": r.to_dict()}
        out.append(level)
        if on_level is not None:
            on_level(level)
        if interrupted:
            break
    ran = [lv["verdict"] for lv in out if lv["verdict"] != "skipped"]
    verdict = max(ran, key=_ORDER.__getitem__) if ran else "fail"
    if verdict == "pass" and any(lv["verdict"] == "skipped" for lv in out):
        verdict = "warn"
    for name in dims:
        seen = [lv["dimensions"][name] for lv in out if name in lv.get("dimensions", {})]
        if seen and all(d["verdict"] == "skipped" for d in seen):
            not_measured.append(f"{_TITLES[name]} ({seen[0]['reasons'][0]})")
    counts = {v: sum(lv["verdict"] == v for lv in out) for v in ("pass", "warn", "fail",
                                                                "skipped")}
    return {"kind": "ws-stress", "verdict": verdict, "thresholds": th.to_dict(),
            "criteria": crit.to_dict(),
            "probes": pr.to_dict(), "levels": out, "counts": counts,
            "degradation": degradation(out), "not_measured": not_measured}

"""`beastnet load ws://...` and `beastnet ws density`: WebSocket load.

Parsing and printing only: what a run or a density test does, and how it is
judged, lives in beastnet.loadgen (ws, ws_config, ws_density).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Optional

from beastnet.cli._common import (EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE,
                                  add_tls_arguments, finish_load_report)
from beastnet.errors import BeastnetError, LoadConfigError, LoadTLSError
# Light: neither NumPy nor the native load generator.
from beastnet.loadgen.verdict import summary_line
from beastnet.loadgen.ws.verdict import WSCriteria

WS_EPILOG = """\
examples:
  beastnet ws density ws://127.0.0.1:8080/v1/stream --symbols @symbols.txt -d 60
  beastnet ws density ws://127.0.0.1:8080/v1/stream --symbols BTC,ETH --tiers 10,100 \\
      --connections 4 --server-pid 1234 --json density.json
Each tier runs once: every connection follows that many symbols (the list is
dealt again when it is shorter: repeats).  Latency needs a timestamp field in
the messages (--ts-key, --ts-unit; CLOCK_REALTIME on both sides).
Every tier (and every stress level's broadcast, and `load ws://`) is judged by
the same rules: a tier fails when nothing arrives, on connection errors, past
--max-gaps missing sequence numbers (with --seq-key), a stall past
--max-stall-ms, reconnects past --max-reconnects; the line names the rule.
exit status: 0 pass (or warn), 1 fail, 2 bad usage or a run that could not start,
130 interrupted."""


STRESS_EPILOG = """\
example:
  beastnet ws stress ws://127.0.0.1:8080/v1/stream --symbols BTC,ETH --quick -d 3
Levels (connections): {levels}; --quick stops after level {quick}.  Each level
runs the broadcast (share connected, connect and upgrade p95, delivery p95/p99
from the messages' timestamps, messages/s), then one run per dimension with
the level's connections: message round trip (--rt-message, by default a
snapshot of the first symbol), subscribe/unsubscribe acknowledged ops/s,
permission checks (--denied-key: every upgrade must be refused 403; or
--denied-subscribe: every answer must hold --refusal), compression
(permessage-deflate offered; a server that does not negotiate it makes the
dimension SKIPPED, never passed).  --dimensions picks some.  A level past this
machine's file-descriptor limit or ephemeral ports is skipped with the
reason, never counted as passed.
exit status: 0 pass (or warn), 1 fail, 2 bad usage, 130 interrupted."""


KNEE_EPILOG = """\
example:
  beastnet ws knee ws://127.0.0.1:8080/v1/stream --symbols BTC --steps 100,1000,5000 -d 5
Each step runs once with that many connections, all following --symbols.
The knee is the last step whose delivery p95 stays within --p95-ms.  A step
past this machine's file-descriptor limit or ephemeral ports is skipped with
the reason and never counted as passed.
exit status: 0 a knee was found (1 if the first step already fails), 2 bad usage."""


def add_ws_load_arguments(p: argparse.ArgumentParser) -> None:
    """The WebSocket settings of `beastnet load ws://HOST:PORT/PATH`."""
    g = p.add_argument_group("WebSocket (ws://HOST:PORT/PATH; --connections, --header, "
                             "--api-key apply)")
    g.add_argument("--symbols", help="comma-separated symbols to subscribe, or @FILE with one "
                                     "a line (default: --keys)")
    g.add_argument("--symbols-per-conn", type=int,
                   help="each connection follows this many, dealt from the list in turn "
                        "(default: every symbol on every connection)")
    g.add_argument("--subscribe", default=None, metavar="TEMPLATE",
                   help="subscribe message, {symbols} = a JSON array (default: beastnet's "
                        "{\"op\":\"subscribe\",\"symbols\":{symbols}}; '' sends none)")
    g.add_argument("--symbols-per-message", type=int, default=1000,
                   help="symbols in one subscribe message (default %(default)s)")
    g.add_argument("--ts-key", default="ts",
                   help="JSON key of the message's timestamp, found anywhere, or a JSON path "
                        "from the root (data.ts, $.data[0].ts); '' = none (default %(default)s)")
    g.add_argument("--ts-unit", default="ms", choices=("ns", "us", "ms", "s"),
                   help="unit of the timestamp since the epoch (default %(default)s)")
    g.add_argument("--seq-key", help="JSON key (or path) of a per-connection sequence number "
                                     "(gaps)")
    g.add_argument("--ping-ms", type=float, default=0.0,
                   help="send a ping this often; no pong within --pong-timeout-ms is a "
                        "heartbeat failure (default: no pings)")
    g.add_argument("--pong-timeout-ms", type=float, default=5000.0)
    g.add_argument("--backoff-ms", type=float, default=100.0,
                   help="reconnect backoff base: delay uniform in [0, min(cap, base*2^n)]")
    g.add_argument("--backoff-cap-ms", type=float, default=10000.0)
    g.add_argument("--server-pid", type=int,
                   help="sample this local process's RSS and CPU every second too")
    g.add_argument("--connect-timeout-ms", type=float, default=2000.0,
                   help="connect, then upgrade, each fail after this (default %(default)g)")
    crit = WSCriteria()
    g.add_argument("--max-gaps", type=int, default=crit.max_gaps,
                   help="fail past this many missing sequence numbers (lost messages, "
                        "with --seq-key; default %(default)s)")
    g.add_argument("--max-stall-ms", type=float, default=crit.max_stall_ms,
                   help="fail when a connection gets nothing for longer than this "
                        "(default %(default)g)")
    g.add_argument("--max-reconnects", type=int, default=crit.max_reconnects,
                   help="fail past this many reconnects (default %(default)s)")
    g.add_argument("--deflate", action="store_true",
                   help="offer permessage-deflate (RFC 7692); what the server compresses is "
                        "inflated and the savings and inflate time reported")


def _common_arguments(p: argparse.ArgumentParser) -> None:
    """What `beastnet load` has and `beastnet ws density` needs too."""
    p.add_argument("-c", "--connections", type=int, default=1,
                   help="connections in the pool (default 1)")
    p.add_argument("-t", "--threads", type=int, default=1, help="generator threads (default 1)")
    p.add_argument("-d", "--duration", type=float, default=60.0,
                   help="measured seconds per tier (default 60)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds excluded first (default 1)")
    p.add_argument("--api-key", help="sent as X-API-Key with the upgrade")
    p.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    p.add_argument("--pin", action="store_true", help="pin generator thread i to CPU i")
    p.add_argument("--json", metavar="PATH", help="write the JSON report here")
    p.add_argument("--html", metavar="PATH", help="write the HTML report here (charts)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line, no table")
    p.add_argument("--progress", action="store_true", help="progress line even when not a TTY")


def _test_parser(wsub: Any, name: str, help_text: str, description: str,
                 epilog: str) -> argparse.ArgumentParser:
    """A `beastnet ws` test's parser with the target and the run settings."""
    p: argparse.ArgumentParser = wsub.add_parser(
        name, help=help_text, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="ws://HOST:PORT/PATH or wss://HOST:PORT/PATH")
    _common_arguments(p)
    add_ws_load_arguments(p)
    add_tls_arguments(p)
    return p


#: `ws stress`'s probe flags: each sets the `StressProbes` field beside it,
#: whose value is its default, with these add_argument options.
_PROBE_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--rt-message", "round_trip_message", {"help": "round-trip request (default %(default)s)"}),
    ("--rt-answer", "round_trip_answer",
     {"help": "pattern of its answer ('' = the next message)"}),
    ("--rt-path", "round_trip_path",
     {"help": "path of the round trip (an echo endpoint; default: the target's)"}),
    ("--unsubscribe", "unsubscribe_template",
     {"metavar": "TEMPLATE", "help": "unsubscribe message (default %(default)s)"}),
    ("--subscribe-ack", "subscribe_ack",
     {"help": "pattern of the subscribe's acknowledgement (default %(default)s)"}),
    ("--unsubscribe-ack", "unsubscribe_ack",
     {"help": "pattern of the unsubscribe's (default %(default)s)"}),
    ("--denied-key", "denied_key",
     {"help": "an API key not allowed the feed: every upgrade with it must be refused 403"}),
    ("--denied-subscribe", "denied_subscribe",
     {"metavar": "TEMPLATE",
      "help": "a subscribe the server must refuse: each answer must hold --refusal"}),
    ("--refusal", "refusal", {"help": "pattern of a refusing answer (default %(default)s)"}),
    ("--compression-connections", "compression_connections",
     {"type": int, "help": "at most this many connections in the compression run "
                           "(default %(default)s)"}),
    ("--server-stats", "server_stats",
     {"metavar": "URL", "help": "a beastnet server's admin listener (http://HOST:PORT): its "
                                "deflate counters are read around the compression run "
                                "(deflates, CPU per publication and per delivered message)"}),
    ("--server-stats-token", "server_stats_token",
     {"metavar": "TOKEN", "help": "the server's admin token (default: $BEASTNET_ADMIN_TOKEN)"}),
)


def add_ws_command(sub: Any) -> None:
    from beastnet.loadgen.ws import density as ws_density
    p = sub.add_parser("ws", help="WebSocket load tests (density, stress, broadcast knee)",
                       description="WebSocket load tests with the native generator.")
    wsub = p.add_subparsers(dest="ws_command", metavar="TEST")
    wsub.required = True
    d = _test_parser(wsub, "density", "symbols per connection, tier by tier",
                     "The subscription-density test: a pool of connections follows more and "
                     "more symbols each.", WS_EPILOG)
    crit = WSCriteria()
    g = d.add_argument_group("tiers and criteria")
    g.add_argument("--tiers", default=",".join(map(str, ws_density.DEFAULT_TIERS)),
                   help="symbols per connection, tier by tier (default %(default)s)")
    g.add_argument("--p99-ms", type=float, default=crit.p99_ms,
                   help="latency p99 limit (default %(default)g)")
    g.add_argument("--min-rate", type=float, default=crit.min_messages_per_s,
                   help="messages/s floor (default: none)")
    d.set_defaults(func=cmd_ws_density, keys="BTC")
    from beastnet.loadgen.ws import stress as ws_stress
    st = _test_parser(wsub, "stress", "the 8-level connection ladder with thresholds",
                      "The WebSocket stress ladder: 10 to 99,000 connections following the "
                      "same symbols, each level judged, then a degradation analysis.",
                      STRESS_EPILOG.format(levels=", ".join(map(str, ws_stress.LEVELS)),
                                           quick=ws_stress.QUICK_MAX_LEVEL))
    th = ws_stress.StressThresholds()
    st.add_argument("--quick", action="store_true",
                    help=f"levels 1-{ws_stress.QUICK_MAX_LEVEL} only")
    st.add_argument("--max-level", type=int, help="stop after this level")
    st.add_argument("--levels", help="custom connections per level, comma-separated")
    for name, (warn, fail) in th.to_dict().items():
        st.add_argument(f"--{name.replace('_', '-')}", type=float, nargs=2,
                        metavar=("WARN", "FAIL"), default=(warn, fail),
                        help=f"thresholds (default {warn:g} {fail:g})")
    pr = ws_stress.StressProbes()
    g = st.add_argument_group("probe dimensions ({symbols}: the first symbol as a JSON array)")
    g.add_argument("--dimensions", default=",".join(ws_stress.DIMENSIONS),
                   help="dimensions to run besides the broadcast (default %(default)s)")
    for flag, field, options in _PROBE_FLAGS:
        g.add_argument(flag, default=getattr(pr, field), **options)
    st.set_defaults(func=cmd_ws_stress, keys="BTC", duration=5.0, threads=2)
    k = _test_parser(wsub, "knee", "subscribers of the same symbols until p95 breaks",
                     "The broadcast knee: more and more subscribers of the same symbols until "
                     "the delivery p95 exceeds a limit.", KNEE_EPILOG)
    k.add_argument("--steps", default="10,100,500,1000,2000,5000,10000",
                   help="subscribers per step (default %(default)s)")
    k.add_argument("--p95-ms", type=float, default=50.0,
                   help="delivery p95 limit (default %(default)g)")
    k.set_defaults(func=cmd_ws_knee, keys="BTC", duration=5.0, threads=2)


def _ws_target(text: str) -> Any:
    """The `targets.Target` of a ws:// or wss:// target."""
    from beastnet.loadgen.targets import parse_target
    target = parse_target(text) if "://" in text else None
    if target is None or target.kind.mode != "ws":
        raise LoadConfigError(f"target {text!r}: expected ws://HOST:PORT/PATH or "
                              "wss://HOST:PORT/PATH")
    return target


def _symbols(spec: str) -> list[str]:
    if spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as f:
                return [line.split()[0] for line in f
                        if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise LoadConfigError(f"symbols file {spec[1:]}: {exc.strerror}") from exc
    return [s for s in spec.split(",") if s]


def ws_config(args: argparse.Namespace) -> Any:
    """The `WSLoadConfig` the arguments describe (checked)."""
    from beastnet.loadgen.ws.config import BEASTNET_SUBSCRIBE, WSLoadConfig
    cfg = WSLoadConfig(
        **_ws_target(args.target).config_fields(), insecure=args.insecure, cacert=args.cacert,
        tls_resume=args.tls_resume, connections=args.connections, threads=args.threads,
        duration_s=args.duration, warmup_s=args.warmup, pin_threads=args.pin,
        api_key=args.api_key, headers=list(args.header),
        symbols=_symbols(args.symbols or args.keys),
        symbols_per_connection=args.symbols_per_conn,
        subscribe_template=BEASTNET_SUBSCRIBE if args.subscribe is None else args.subscribe,
        symbols_per_message=args.symbols_per_message, ts_key=args.ts_key or None,
        ts_unit=args.ts_unit, seq_key=args.seq_key or None, ping_interval_ms=args.ping_ms,
        pong_timeout_ms=args.pong_timeout_ms, backoff_base_ms=args.backoff_ms,
        backoff_cap_ms=args.backoff_cap_ms, connect_timeout_ms=args.connect_timeout_ms,
        deflate=args.deflate)
    cfg.validate()
    return cfg


def _criteria(args: argparse.Namespace, **limits: Any) -> Any:
    """The `WSCriteria` of a run, tier or level: the shared limits from
    --max-gaps, --max-stall-ms and --max-reconnects, then `limits`."""
    return WSCriteria(max_gaps=args.max_gaps, max_stall_ms=args.max_stall_ms,
                      max_reconnects=args.max_reconnects, **limits)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _deflate_lines(e: dict) -> list[str]:
    """The compression line, when permessage-deflate was offered."""
    if not (e["deflate_negotiated"] or e["deflate_missing"]):
        return []
    if not e["deflate_negotiated"]:
        return ["  deflate   offered; the server did not negotiate permessage-deflate"]
    inflated = e["inflated_bytes"]
    saved = f"{1 - e['deflated_bytes'] / inflated:.1%}" if inflated else "-"
    cost = f"{e['inflate_ns'] / 1e3 / (inflated / 1024):.2f}" if inflated else "-"
    return [f"  deflate   {e['compressed_messages']} compressed messages, "
            f"{e['deflated_bytes']} bytes on the wire for {inflated} ({saved} saved), "
            f"inflate {cost} us/KiB"]


def format_ws_result(d: dict) -> str:
    """A WebSocket run's summary (from `LoadResult.to_dict()`)."""
    from beastnet.loadgen.report import tls_line
    e = d["extra"]
    lat = d["latency_ns"]
    return "\n".join([
        f"ws load: {e['connections']} connections, {d['duration_s']:.2f} s measured"
        + ("  (interrupted)" if d["interrupted"] else ""),
        f"  messages  {d['received']}  {e['messages_per_s']:.0f}/s  "
        f"{e['bytes_per_s'] / 1e6:.3f} MB/s payload  error messages {d['error_replies']}",
        "  latency   " + "  ".join(f"{k} {_ms(None if v is None else v / 1e6)} ms"
                                   for k, v in lat.items())
        + f"  (no stamp {e['no_timestamp']}, clock skew {e['clock_skew']})",
        f"  sequence  missing {d['lost']} in {e['gap_events']} gaps, "
        f"backwards {e['seq_backwards']}",
        f"  handshake connect p50 {_ms(e['connect_ms']['p50'])} ms  "
        + (f"TLS p50 {_ms(e['tls']['handshake_ms']['p50'])} ms  " if e.get("tls") else "")
        + f"upgrade p50 {_ms(e['upgrade_ms']['p50'])} ms  p99 {_ms(e['upgrade_ms']['p99'])} ms",
        *filter(None, [tls_line(e)]),
        f"  stalls    longest {_ms(e['longest_stall_ms'])} ms  "
        f"p50 of connections {_ms(e['stall_ms']['p50'])} ms",
        f"  reconnect {e['reconnects']}  backoff max {_ms(e['backoff_ms']['max'])} ms  "
        f"outage p50 {_ms(e['reconnect_ms']['p50'])} ms  close frames {e['close_frames']}",
        f"  errors    {d['errors']}  {d['errors_by_kind'] or ''}",
        *_deflate_lines(e),
        f"  generator CPU {d['cpu_s']:.3f} s"
        + (f" = {d['cpu_s'] / d['received'] * 1e9:.0f} ns/message" if d["received"] else ""),
        f"  clock     {e['clock_rule']}",
    ])


def _progress(args: argparse.Namespace) -> Any:
    from beastnet.loadgen import report
    # The stream is looked up now: sys.stderr may have been replaced since import.
    return report.ProgressLine(sys.stderr,
                               enabled=False if args.quiet else True if args.progress else None)


def _finish(args: argparse.Namespace, body: dict, config: dict, text: str) -> int:
    from beastnet import loadgen
    from beastnet.loadgen import report
    if not args.quiet:
        print(text)
    full = report.build_report(body, config, loadgen.machine_info(),
                               argv=sys.argv[1:] if sys.argv else None)
    return finish_load_report(args.command, args, full, text, body)


def _guarded(name: str, args: argparse.Namespace,
             work: Callable[[Any], Any]) -> tuple[Any, Optional[int]]:
    """(what `work(progress)` returned, None), or (None, exit status) after
    one line on stderr: bad input or a run that could not start is 2,
    Ctrl-C between runs 130."""
    progress = _progress(args)
    try:
        return work(progress), None
    except LoadTLSError as exc:
        status, message = EXIT_UNREACHABLE, str(exc)
    except (BeastnetError, ValueError, OSError) as exc:
        status, message = EXIT_USAGE, str(exc)
    except KeyboardInterrupt:
        status, message = EXIT_INTERRUPTED, "interrupted"
    finally:
        progress.clear()
    print(f"{name}: {message}", file=sys.stderr)
    return None, status


def _counts(spec: str, flag: str) -> list[int]:
    """A comma-separated list of positive integers (`--tiers`, `--steps`)."""
    try:
        values = [int(x) for x in spec.split(",") if x]
    except ValueError:
        raise LoadConfigError(f"{flag} {spec!r}: integers expected") from None
    if not values or min(values) < 1:
        raise LoadConfigError(f"{flag} needs positive counts")
    return values


def cmd_load_ws(args: argparse.Namespace, runner: Optional[Callable[..., Any]] = None) -> int:
    """`beastnet load ws://...`: one WebSocket run (through `runner`, the
    load agents' coordinator, when given)."""
    from beastnet.loadgen.report import agent_rows, agents_line, text_table
    from beastnet.loadgen.ws.run import run_ws_load
    from beastnet.loadgen.ws.density import ProcSampler
    from beastnet.loadgen.ws.verdict import judge_ws
    cfg, status = _guarded("beastnet load", args, lambda progress: ws_config(args))
    if cfg is None:
        return int(status or EXIT_USAGE)
    pids = {"generator": os.getpid()}
    if args.server_pid is not None:
        pids["server"] = args.server_pid
    sampler = ProcSampler(pids)

    def run(progress: Any) -> Any:
        def on_second(row: dict) -> None:
            sampler.sample()
            progress(row)
        return (runner or run_ws_load)(cfg, progress=on_second)

    result, status = _guarded("beastnet load", args, run)
    if result is None:
        return int(status or EXIT_USAGE)
    sampler.sample()
    crit = _criteria(args, p99_ms=args.max_p99_ms if args.max_p99_ms else math.inf,
                     max_rate_cv=math.inf)
    verdict, reasons = judge_ws(result, crit)
    d = result.to_dict()
    body = {"kind": "run", "verdict": verdict, "reasons": reasons, "result": d,
            "resources": sampler.rows,
            # Nothing came back at all: no message, no upgrade answered.
            "unreachable": result.received == 0 and result.errors > 0
            and set(result.errors_by_kind) <= {"connect_refused", "connect_timeout"}}
    # The verdict line names the first rule that failed; the others follow.
    agents = agent_rows(d)
    table = (f"\n\n{text_table(agents[1:], agents[0])}\n{agents_line(d)}" if agents else "")
    text = format_ws_result(d) + table + "\n" + summary_line(body) + "".join(
        f"\n  {r}" for r in reasons[1 if verdict == "fail" else 0:])
    return _finish(args, body, cfg.to_dict(), text)


def format_density(body: dict) -> str:
    head = ["symbols", "distinct", "conns", "msgs/s", "p50 ms", "p99 ms", "max ms",
            "stall ms", "reconn", "errors", "cv", "gen CPU", "srv CPU", "srv RSS MiB", "verdict"]
    rows = [head]
    for t in body["tiers"]:
        r, e = t["result"], t["result"]["extra"]
        lat = r["latency_ns"]
        res = t["resources"]
        srv_cpu = [row["server_cpu"] for row in res if row.get("server_cpu") is not None]
        gen_cpu = [row["generator_cpu"] for row in res if row.get("generator_cpu") is not None]
        srv_rss = [row["server_rss_mib"] for row in res if row.get("server_rss_mib") is not None]
        rows.append([str(t["symbols_per_connection"]), str(t["distinct_symbols"]),
                     str(t["connections"]), f"{t['messages_per_s']:.0f}",
                     _ms(None if lat["p50"] is None else lat["p50"] / 1e6),
                     _ms(None if lat["p99"] is None else lat["p99"] / 1e6),
                     _ms(None if lat["max"] is None else lat["max"] / 1e6),
                     _ms(e["longest_stall_ms"]), str(e["reconnects"]), str(r["errors"]),
                     "-" if t["rate_cv"] is None else f"{t['rate_cv']:.2f}",
                     f"{max(gen_cpu):.2f}" if gen_cpu else "-",
                     f"{max(srv_cpu):.2f}" if srv_cpu else "-",
                     f"{max(srv_rss):.1f}" if srv_rss else "-", t["verdict"].upper()])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    for t in body["tiers"]:
        for reason in t["reasons"]:
            out.append(f"  {t['symbols_per_connection']} symbols: {t['verdict']}: {reason}")
    out.append(f"verdict: {body['verdict'].upper()}  (CPU: peak cores in a second)")
    return "\n".join(out)


def cmd_ws_density(args: argparse.Namespace) -> int:
    from beastnet.loadgen.ws import density as ws_density
    name = "beastnet ws density"

    def setup(progress: Any) -> tuple[Any, list[int], Any]:
        return ws_config(args), _counts(args.tiers, "--tiers"), _criteria(
            args, p99_ms=args.p99_ms, min_messages_per_s=args.min_rate)

    plan, status = _guarded(name, args, setup)
    if plan is None:
        return int(status or EXIT_USAGE)
    cfg, tiers, crit = plan

    def work(progress: Any) -> dict:
        def on_tier(t: dict) -> None:
            progress.clear()
            if not args.quiet and sys.stderr.isatty():
                print(f"{t['symbols_per_connection']} symbols: {t['messages_per_s']:.0f} "
                      f"msgs/s {t['verdict'].upper()}", file=sys.stderr)
        return ws_density.run_density(cfg, tiers, crit, server_pid=args.server_pid,
                                      progress=progress, on_tier=on_tier)

    body, status = _guarded(name, args, work)
    if body is None:
        return int(status or EXIT_USAGE)
    return _finish(args, body, cfg.to_dict(), format_density(body))


def format_knee(body: dict) -> str:
    lines = [f"{'subscribers':>11}  {'msgs/s':>9}  {'p50 ms':>8}  {'p95 ms':>8}  "
             f"{'p99 ms':>8}  verdict"]
    for st in body["steps"]:
        if st["verdict"] == "skipped":
            lines.append(f"{st['subscribers']:>11}  {'-':>9}  {'-':>8}  {'-':>8}  {'-':>8}  "
                         f"SKIPPED: {st['reasons'][0]}")
            continue
        lines.append(f"{st['subscribers']:>11}  {st['messages_per_s']:>9.0f}  "
                     f"{_ms(st['p50_ms'])!s:>8}  {_ms(st['p95_ms'])!s:>8}  "
                     f"{_ms(st['p99_ms'])!s:>8}  {st['verdict'].upper()}"
                     + "".join(f"  {r}" for r in st["reasons"]))
    lines.append(f"knee: {body['knee'] if body['knee'] is not None else 'none'} subscribers "
                 f"(p95 limit {body['p95_limit_ms']:g} ms)  verdict: {body['verdict'].upper()}")
    return "\n".join(lines)


def cmd_ws_knee(args: argparse.Namespace) -> int:
    from beastnet.loadgen.ws import knee as ws_knee
    name = "beastnet ws knee"
    plan, status = _guarded(name, args,
                            lambda progress: (ws_config(args), _counts(args.steps, "--steps")))
    if plan is None:
        return int(status or EXIT_USAGE)
    cfg, steps = plan
    body, status = _guarded(name, args, lambda progress: ws_knee.run_knee(
        cfg, steps, args.p95_ms, progress=progress))
    if body is None:
        return int(status or EXIT_USAGE)
    return _finish(args, body, cfg.to_dict(), format_knee(body))


def _rate(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}"


def _us(ns: Optional[float]) -> str:
    return "-" if ns is None else f"{ns / 1e3:.3f}"


def _share(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0%}"


def format_stress(body: dict) -> str:
    lines = [f"{'lvl':>3}  {'conns':>6}  {'connected':>9}  {'upg p95':>8}  {'p95 ms':>8}  "
             f"{'p99 ms':>8}  {'msgs/s':>9}  {'rt p95':>8}  {'rt/s':>8}  {'sub/s':>8}  "
             f"{'sub p95':>8}  {'refused':>7}  {'ref p95':>8}  {'granted':>7}  {'saved':>5}  "
             f"{'us/KiB':>6}  {'dfl us':>8}  verdict"]
    for lv in body["levels"]:
        m = lv["metrics"]
        if lv["verdict"] == "skipped":
            lines.append(f"{lv['level']:>3}  {lv['connections']:>6}  SKIPPED: {lv['reasons'][0]}")
            continue
        lines.append(f"{lv['level']:>3}  {lv['connections']:>6}  {m['connected'] or 0:>9.2%}  "
                     f"{_ms(m['upgrade_p95_ms']):>8}  {_ms(m['delivery_p95_ms']):>8}  "
                     f"{_ms(m['delivery_p99_ms']):>8}  {m['messages_per_s']:>9.0f}  "
                     f"{_ms(m.get('round_trip_p95_ms')):>8}  "
                     f"{_rate(m.get('round_trips_per_s')):>8}  "
                     f"{_rate(m.get('subscribe_ops_per_s')):>8}  "
                     f"{_ms(m.get('subscribe_p95_ms')):>8}  {_rate(m.get('refusals')):>7}  "
                     f"{_ms(m.get('refusal_p95_ms')):>8}  {_rate(m.get('wrongly_granted')):>7}  "
                     f"{_share(m.get('compression_saved')):>5}  "
                     f"{_ms(m.get('inflate_us_per_kib')):>6}  "
                     f"{_us(m.get('server_deflate_ns_per_message')):>8}  "
                     f"{lv['verdict'].upper()}" + "".join(f"  {r}" for r in lv["reasons"]))
    d = body["degradation"]
    dims = "  ".join(f"{k} {'-' if v is None else f'{v:.0%}'}"
                     for k, v in d["by_dimension"].items())
    lines.append(f"degradation (1 - best/worst): {dims}")
    lines.append(f"most degraded: {d['most_degraded'] or '-'}")
    lines.append(f"not measured: {', '.join(body['not_measured']) or '-'}")
    c = body["counts"]
    lines.append(f"levels: {c['pass']} pass, {c['warn']} warn, {c['fail']} fail, "
                 f"{c['skipped']} skipped  verdict: {body['verdict'].upper()}")
    return "\n".join(lines)


def cmd_ws_stress(args: argparse.Namespace) -> int:
    from beastnet.loadgen.ws import stress as ws_stress
    name = "beastnet ws stress"

    def setup(progress: Any) -> tuple[Any, list[int], Any, Any]:
        levels = (_counts(args.levels, "--levels") if args.levels
                  else list(ws_stress.LEVELS))
        last = ws_stress.QUICK_MAX_LEVEL if args.quick else len(levels)
        if args.max_level is not None:
            if args.max_level < 1:
                raise LoadConfigError("--max-level must be >= 1")
            last = min(last, args.max_level)
        th = ws_stress.StressThresholds(**{
            k: tuple(getattr(args, k)) for k in ws_stress.StressThresholds().to_dict()})
        dims = [d for d in args.dimensions.replace("-", "_").split(",") if d]
        unknown = sorted(set(dims) - set(ws_stress.DIMENSIONS))
        if unknown:
            raise LoadConfigError(f"--dimensions: unknown {', '.join(unknown)} (known: "
                                  f"{', '.join(ws_stress.DIMENSIONS)})")
        if args.compression_connections < 1:
            raise LoadConfigError("--compression-connections must be >= 1")
        if args.rt_path is not None and not args.rt_path.startswith("/"):
            raise LoadConfigError(f"--rt-path must start with '/', got {args.rt_path!r}")
        pr = ws_stress.StressProbes(dimensions=dims, **{
            field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in _PROBE_FLAGS})
        if pr.server_stats is not None and "compression" in dims:
            ws_stress.server_deflate_counters(pr)     # unreachable: one line now, not mid-run
        return ws_config(args), levels[:last], th, pr

    plan, status = _guarded(name, args, setup)
    if plan is None:
        return int(status or EXIT_USAGE)
    cfg, levels, th, pr = plan
    body, status = _guarded(name, args, lambda progress: ws_stress.run_stress(
        cfg, levels, th, progress=progress, probes=pr,
        criteria=_criteria(args, p99_ms=math.inf)))
    if body is None:
        return int(status or EXIT_USAGE)
    return _finish(args, body, cfg.to_dict(), format_stress(body))

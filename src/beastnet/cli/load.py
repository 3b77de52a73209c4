"""`beastnet load`: drive a server and report honest numbers.

Parsing and printing only: what a run, a ramp or the knee finder does, and
how it is judged, lives in beastnet.loadgen (config, ramp, report).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Optional, Sequence

from beastnet.errors import AgentsError, BeastnetError, LoadConfigError, LoadTLSError
from beastnet.cli._common import (EXIT_INTERRUPTED, EXIT_NO_AGENTS, EXIT_UNREACHABLE,
                                  EXIT_USAGE, add_agents_arguments, add_tls_arguments,
                                  finish_load_report, open_agents)
from beastnet.cli.ws import add_ws_load_arguments, cmd_load_ws
# Light: neither NumPy nor the native load generator is imported here.
from beastnet.loadgen import ramp, targets, verdict


LOAD_EPILOG = """\
targets:  {targets}
examples:
  beastnet load 127.0.0.1:9000 --keys BTC,ETH -d 5              closed loop, 5 s
  beastnet load 127.0.0.1:9000 --rate 200000 --poisson           open loop
  beastnet load 127.0.0.1:9000 --quick --json r.json --html r.html   levels 1-6
  beastnet load 127.0.0.1:9000 --find-max --slo-p99-ms 5          knee finder
  beastnet load http://127.0.0.1:8080/v1/ -c 64 --pipeline 4      HTTP
  beastnet load https://localhost:8080/v1/ --cacert ca.pem --conn-mode close --tls-resume
  beastnet load 127.0.0.1:9000 --expect rate_limited --api-key K   a limit test
  beastnet load 127.0.0.1:9000 --server-stats http://127.0.0.1:8080 --html r.html
                                        the server's counters beside the client's
  beastnet report r.json other.json     re-render a saved report, or A/B two
the ramp (--ramp; --quick stops after level {quick}):
{table}
default criteria:
  {criteria}.
a single run fails when nothing was answered, when fewer than --min-success
(default 99.9 %) of the requests succeeded -- lost, failed, error bodies and
non-2xx statuses count against it unless declared with --expect/--expect-status
-- or when transport errors exceed that share; the last line says why.
a ws:// run fails when nothing arrives, on connection errors, past --max-gaps
missing sequence numbers (lost messages, with --seq-key; default 0), a stall
past --max-stall-ms (default 1000) or reconnects past --max-reconnects
(default 0) -- the rules of every `beastnet ws` tier and level.
load agents (--agents N --redis URL): the run, each ramp level or probe is
split over N `beastnet agent` processes (the rate, the sockets or connections
and -n divided; -t threads on each agent), started on one barrier; their
histograms merge exactly and each agent has a row beside the total.  An agent
that dies mid-run is reported with what it sent, and the run fails as short.
exit status: 0 pass (or warn), 1 fail, 2 bad usage or a run that could not start,
3 the target never answered (nothing listening, refused, or silent; or no TLS
handshake succeeded: a certificate that did not verify, a server without TLS),
4 --agents: Redis unreachable, or fewer than N agents free within --agents-wait,
130 interrupted between runs."""


def add_load_command(sub: Any) -> None:
    p = sub.add_parser("load", help="drive a server and report honest numbers",
                       description="Load generator: native threads, closed or open loop, "
                                   "ramps and a knee finder.",
                       epilog=LOAD_EPILOG.format(targets=targets.usage_lines(),
                                                 table=ramp.ramp_table(),
                                                 criteria=ramp.criteria_text(),
                                                 quick=ramp.QUICK_MAX_LEVEL), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="HOST:PORT, udp://HOST:PORT, http(s)://HOST:PORT[/PREFIX] "
                                  "or ws(s)://HOST:PORT/PATH")
    g = p.add_argument_group("requests")
    g.add_argument("-k", "--keys", default="BTC",
                   help="comma-separated keys, or @FILE with one 'KEY [WEIGHT]' a line")
    g.add_argument("--weights", help="comma-separated weights, one per key (default uniform)")
    g.add_argument("--api-key", help="APIKEY sent with every request (UDP) / X-API-Key (HTTP)")
    g = p.add_argument_group("load shape")
    g.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds (default 5)")
    g.add_argument("--warmup", type=float, default=1.0, help="seconds excluded first (default 1)")
    g.add_argument("-n", "--requests", type=int, help="stop after this many measured requests")
    g.add_argument("--rate", type=float, help="open loop: requests/s in total")
    g.add_argument("--poisson", action="store_true", help="open loop with Poisson arrivals")
    g.add_argument("--timeout-ms", type=float, default=200.0, help="a request is lost after this")
    g.add_argument("-t", "--threads", type=int, default=2, help="generator threads (default 2)")
    g.add_argument("--pin", action="store_true", help="pin generator thread i to CPU i")
    g = p.add_argument_group("UDP")
    g.add_argument("-s", "--sockets", type=int, default=64, help="connected sockets (default 64)")
    g.add_argument("-w", "--window", type=int, default=32,
                   help="closed loop: outstanding requests per socket (default 32)")
    g.add_argument("--batch", type=int, default=32, help="datagrams per sendmmsg/recvmmsg")
    g = p.add_argument_group("HTTP")
    g.add_argument("-c", "--connections", type=int, default=64, help="connections (default 64)")
    g.add_argument("--pipeline", type=int, default=1, help="requests in flight per connection")
    g.add_argument("--conn-mode", default="keepalive",
                   help="keepalive (default), close (new connection per request), or N "
                        "(N requests per connection)")
    g.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    add_tls_arguments(p)
    g = p.add_argument_group("ramp and criteria")
    g.add_argument("--ramp", action="store_true", help="run the 13-level ramp (table below)")
    g.add_argument("--quick", action="store_true",
                   help=f"ramp levels 1-{ramp.QUICK_MAX_LEVEL} only")
    g.add_argument("--max-level", type=int, help="ramp up to this level")
    g.add_argument("--levels", help="custom ramp: 'REQUESTSxCONCURRENCY,...'")
    g.add_argument("--level-max-s", type=float, default=60.0, help="time cap of one level")
    g.add_argument("--keep-going", action="store_true", help="do not stop at the breaking point")
    crit = ramp.Criteria()          # the defaults come from the criteria themselves
    latency = f"{crit.latency_from}-{crit.latency_through}"
    g.add_argument("--success-through", type=int, default=crit.success_through,
                   help="100%% success required through this level (default %(default)s)")
    g.add_argument("--p50-ms", type=float, default=crit.p50_ms,
                   help=f"p50 limit in levels {latency} (default %(default)g)")
    g.add_argument("--p99-ms", type=float, default=crit.p99_ms,
                   help=f"p99 limit in levels {latency} (default %(default)g)")
    g.add_argument("--latency-levels", default=latency,
                   help="levels the latency limits apply to (default %(default)s)")
    g.add_argument("--machine-relative", action="store_true",
                   help="a latency limit that is a throughput bar this machine does not reach "
                        "(Little's law: concurrency / limit > answered req/s) warns, naming "
                        "the bar, instead of failing (`beastnet demo` uses this)")
    g.add_argument("--abort-loss", type=float,
                   help="stop a run early once one second loses more than this fraction")
    g.add_argument("--abort-p99-ms", type=float,
                   help="stop a run early once one second's p99 exceeds this")
    g.add_argument("--max-p99-ms", type=float, help="single run: fail above this p99")
    g.add_argument("--min-success", type=float,
                   help=f"fail below this success rate (single run default "
                        f"{verdict.DEFAULT_MIN_SUCCESS:g}; ramp default {crit.min_success:g} "
                        "through --success-through)")
    g.add_argument("--expect", action="append", default=[], metavar="NAME",
                   help="count this error body as success, e.g. rate_limited (repeatable; "
                        "HTTP: its status, e.g. 429)")
    g.add_argument("--expect-status", action="append", default=[], metavar="STATUS",
                   help="HTTP: count this status as success, e.g. 429 (repeatable)")
    g = p.add_argument_group("knee finder")
    g.add_argument("--find-max", action="store_true",
                   help="raise the open-loop rate until the SLO breaks, then bisect")
    g.add_argument("--start-rate", type=float, default=10000.0, help="first rate tried")
    g.add_argument("--max-rate", type=float, help="never try above this rate")
    g.add_argument("--step-s", type=float, default=2.0, help="measured seconds per probe")
    g.add_argument("--slo-p99-ms", type=float, default=10.0, help="SLO: p99 limit (10 ms)")
    g.add_argument("--slo-loss", type=float, default=0.001, help="SLO: loss limit (0.001)")
    g.add_argument("--max-probes", type=int, default=12, help="at most this many probes")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", help="write the JSON report here")
    g.add_argument("--html", "--plot", dest="html", metavar="PATH",
                   help="write a self-contained HTML page with SVG charts here")
    g.add_argument("--hdr", metavar="PATH",
                   help="write the latency histograms here as an HdrHistogram log "
                        "(standard compressed encoding; one line per run, level or probe)")
    g.add_argument("--server-stats", metavar="URL",
                   help="sample a beastnet server's /admin/stats (http://HOST:PORT) every "
                        "second, beside the client timeline in the JSON and HTML reports")
    g.add_argument("--server-stats-token", metavar="TOKEN",
                   help="the server's admin token (default: $BEASTNET_ADMIN_TOKEN)")
    g.add_argument("-p", "--percentile", type=float, action="append", default=[],
                   help="also report this percentile (repeatable)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress line, no table")
    g.add_argument("--progress", action="store_true", help="progress line even when not a TTY")
    add_agents_arguments(p, "the run (each ramp level, each probe)")
    add_ws_load_arguments(p)
    p.set_defaults(func=cmd_load)


def _parse_keys(args: argparse.Namespace) -> tuple[list[str], Optional[list[float]]]:
    keys: list[str] = []
    weights: list[float] = []
    if args.keys.startswith("@"):
        try:
            with open(args.keys[1:], encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if not parts or parts[0].startswith("#"):
                        continue
                    keys.append(parts[0])
                    weights.append(float(parts[1]) if len(parts) > 1 else 1.0)
        except OSError as exc:
            raise LoadConfigError(f"keys file {args.keys[1:]}: {exc.strerror}") from exc
        except ValueError as exc:
            raise LoadConfigError(f"keys file {args.keys[1:]}: {exc}") from exc
    else:
        keys = [k for k in args.keys.split(",") if k]
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise LoadConfigError(f"--weights {args.weights!r}: numbers expected") from None
    return keys, (weights if weights and len(set(weights)) > 1 or args.weights else None)


def _base_config(args: argparse.Namespace, target: targets.Target) -> Any:
    """The checked config of a request target (UDP, HTTP, HTTPS) from its
    registry entry: the common settings, then the kind's own options."""
    keys, weights = _parse_keys(args)
    kind = target.kind
    fields = dict(keys=keys, weights=weights, threads=args.threads, rate=args.rate,
                  poisson=args.poisson, duration_s=args.duration, warmup_s=args.warmup,
                  timeout_ms=args.timeout_ms, pin_threads=args.pin, api_key=args.api_key,
                  max_requests=args.requests, **target.config_fields())
    if "insecure" not in dict(kind.options) and (args.insecure or args.cacert
                                                 or args.tls_resume):
        raise LoadConfigError("--insecure, --cacert and --tls-resume need an https:// "
                              "or wss:// target")
    for name, attr in kind.options:
        value = getattr(args, attr)
        fields[name] = list(value) if isinstance(value, list) else value
    cfg = kind.config_class()(**fields)
    cfg.validate()
    return cfg


def cmd_load(args: argparse.Namespace) -> int:
    from beastnet import loadgen
    from beastnet.loadgen import report
    try:
        target = targets.parse_target(args.target)
    except LoadConfigError as exc:
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not target.kind.requests:
        if args.ramp or args.quick or args.max_level or args.levels or args.find_max:
            print(f"beastnet load: a {target.kind.scheme}:// target has no request loop to "
                  "ramp: use `beastnet ws stress` or `beastnet ws knee`", file=sys.stderr)
            return EXIT_USAGE
        return _ws_with_agents(args)
    try:
        cfg = _base_config(args, target)
        ramping = bool(args.ramp or args.quick or args.max_level or args.levels)
        if args.find_max and ramping:
            raise LoadConfigError("--find-max and a ramp cannot be combined")
        latency_levels = ramp.parse_level_range(args.latency_levels)
        args.expected = verdict.Expect.parse(args.expect, args.expect_status)
        if args.min_success is not None and not 0.0 <= args.min_success <= 1.0:
            raise LoadConfigError(f"--min-success {args.min_success:g}: expected 0..1")
        args.runner = None
    except (BeastnetError, ValueError) as exc:
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = report.ProgressLine(enabled=False if args.quiet else True if args.progress else None)
    stop_when = ramp.abort_when(args.abort_loss, args.abort_p99_ms)
    server = None
    coordinator = None
    try:
        coordinator = open_agents(args)
        if coordinator is not None:
            args.runner = coordinator.run
        if args.server_stats:
            from beastnet.loadgen.serverstats import ServerStatsSampler
            server = ServerStatsSampler(args.server_stats, args.server_stats_token).start()
        if args.find_max:
            body, text = _find_max(args, cfg, progress, stop_when)
        elif ramping:
            body, text = _ramp(args, cfg, progress, stop_when, latency_levels)
        else:
            body, text = _single(args, cfg, progress, stop_when)
    except LoadTLSError as exc:
        progress.clear()
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AgentsError as exc:
        progress.clear()
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_NO_AGENTS
    except (BeastnetError, ValueError, OSError) as exc:
        progress.clear()
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # A run in progress returns its partial result itself; this is a
        # Ctrl-C between runs (socket set-up, between ramp levels).
        progress.clear()
        print("beastnet load: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.stop()
        if coordinator is not None:
            coordinator.close()
    progress.clear()
    full = report.build_report(body, cfg.to_dict(), loadgen.machine_info(),
                               argv=sys.argv[1:] if sys.argv else None)
    if server is not None:
        full["server_stats"] = server.to_dict()
        if not server.rows:
            print(f"beastnet load: --server-stats {server.url}: no read succeeded "
                  f"({server.last_error})", file=sys.stderr)
    if not args.quiet:
        print(text)
    return finish_load_report("load", args, full, text, body)


def _ws_with_agents(args: argparse.Namespace) -> int:
    """`beastnet load ws://...`, through the load agents with --agents N."""
    try:
        coordinator = open_agents(args)
    except AgentsError as exc:
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_NO_AGENTS
    except BeastnetError as exc:
        print(f"beastnet load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if coordinator is None:
        return cmd_load_ws(args)
    try:
        return cmd_load_ws(args, runner=coordinator.run)
    finally:
        coordinator.close()


def _extra_percentiles(result: Any, qs: Sequence[float]) -> dict:
    return {f"{q:g}": (None if math.isnan(result.percentile(q)) else result.percentile(q))
            for q in qs}


def _live(args: argparse.Namespace, line: str, progress: Any) -> None:
    """A finished level or probe, on a terminal only (pipes get the table)."""
    progress.clear()
    if not args.quiet and sys.stderr.isatty():
        print(line, file=sys.stderr)


def _single(args: argparse.Namespace, cfg: Any, progress: Any,
            stop_when: Any) -> tuple[dict, str]:
    from beastnet.loadgen import report
    kind = targets.kind_of_mode(cfg.mode)
    run = args.runner or kind.run_function()
    result = run(cfg, progress=progress, stop_when=stop_when)
    progress.clear()
    d = result.to_dict()
    d["extra_percentiles"] = _extra_percentiles(result, args.percentile)
    judge = kind.judge_function()
    outcome, reasons = judge(result, args.max_p99_ms, args.min_success, args.expected)
    body = {"kind": "run", "verdict": outcome, "reasons": reasons,
            "unreachable": verdict.unreachable(result), "expect": args.expected.to_dict(),
            "result": d}
    return body, report.format_run(body)


def _ramp(args: argparse.Namespace, cfg: Any, progress: Any, stop_when: Any,
          latency_levels: tuple[int, int]) -> tuple[dict, str]:
    from beastnet.loadgen import report
    levels = ramp.select_levels(args.levels, quick=args.quick, max_level=args.max_level)
    criteria = ramp.Criteria(success_through=args.success_through, p50_ms=args.p50_ms,
                             p99_ms=args.p99_ms, latency_from=latency_levels[0],
                             latency_through=latency_levels[1], expect=args.expected,
                             machine_relative=args.machine_relative)
    if args.min_success is not None:
        criteria.min_success = args.min_success

    def before_level(level: ramp.Level) -> None:
        progress.prefix = f"level {level.number}: "

    def on_level(lr: ramp.LevelResult) -> None:
        r = lr.result
        _live(args, report.level_line(lr.level.number, r.rps, r.percentile(50),
                                      r.percentile(99), lr.verdict), progress)

    rep = ramp.ramp_load(cfg, levels, criteria, max_seconds=args.level_max_s,
                         stop_at_break=not args.keep_going, progress=progress,
                         stop_when=stop_when, before_level=before_level, on_level=on_level,
                         runner=args.runner)
    body = rep.to_dict()
    for lv, lr in zip(body["levels"], rep.levels):
        lv["result"]["extra_percentiles"] = _extra_percentiles(lr.result, args.percentile)
    return body, report.format_ramp(body)


def _find_max(args: argparse.Namespace, cfg: Any, progress: Any,
              stop_when: Any) -> tuple[dict, str]:
    from beastnet.loadgen import report

    def before_probe(rate: float) -> None:
        progress.prefix = f"rate {rate:.0f}/s: "

    rep = ramp.find_max_load(cfg, step_s=args.step_s,
                             slo=ramp.SLO(p99_ms=args.slo_p99_ms, max_loss=args.slo_loss),
                             start_rate=args.start_rate, max_probes=args.max_probes,
                             max_rate=args.max_rate, progress=progress, stop_when=stop_when,
                             before_probe=before_probe,
                             on_probe=lambda p: _live(args, report.probe_line(p), progress),
                             runner=args.runner)
    body = rep.to_dict()
    return body, report.format_knee(body)

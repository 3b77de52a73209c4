"""`beastnet demo`: serve 150 assets and ramp a load against them."""
from __future__ import annotations

import argparse
from typing import Any

DEMO_EPILOG = """\
Starts the UDP price server for 150 assets on 127.0.0.1 (a simulated feed
re-publishing every price 10 times a second), runs the quick ramp (levels 1-6
of the 13-level ramp that `beastnet load --help` lists) against it with the
native load generator, prints the per-level table and the server's counters.

exit status:
  0  every level passed
  1  a level failed its criteria
  2  bad flag
  130  interrupted (Ctrl-C)"""


def add_demo_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="serve 150 assets, ramp a load against them, print the report",
                       description="The whole job in one command.", epilog=DEMO_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-level", type=int, default=6, metavar="N",
                   help="last ramp level, 1..13 (default: 6; 13 = the full ramp)")
    p.add_argument("--sockets", type=int, metavar="N",
                   help="server sockets, one reader thread each (default: one per CPU)")
    p.add_argument("--no-steering", action="store_true",
                   help="turn CPU steering off (default: on when there is one socket per CPU)")
    p.add_argument("--feed-rounds-per-s", "--updates-per-s", dest="feed_rounds_per_s", type=float,
                   default=10.0, metavar="N",
                   help="every price re-published this many times a second, as `beastnet serve "
                        "--feed-rounds-per-s` (default: 10)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report here (default: none)")
    p.add_argument("--html", metavar="FILE",
                   help="write the HTML/SVG report here (default: none)")
    p.set_defaults(func=cmd_demo)


#: The server's counters the demo's report shows.
DEMO_SERVER_COUNTERS = ("rx_packets", "tx_packets", "hits", "misses", "bad_requests",
                        "send_errors", "kernel_drops", "queue_drops", "rx_batches")


def table_writes(table: Any) -> int:
    """Writes published so far: the newest entry's version is the write count."""
    return max((entry.version for key in table.keys() if (entry := table.entry(key))), default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import sys
    import tempfile
    import threading

    from beastnet.cli._common import EXIT_USAGE
    for ok, message in ((1 <= args.max_level <= 13,
                         f"--max-level must be 1..13, got {args.max_level}"),
                        (args.sockets is None or args.sockets >= 1,
                         f"--sockets must be >= 1, got {args.sockets}"),
                        (args.feed_rounds_per_s > 0,
                         f"--feed-rounds-per-s must be > 0, got {args.feed_rounds_per_s:g}")):
        if not ok:
            print(f"beastnet demo: error: {message}", file=sys.stderr)
            return EXIT_USAGE

    from beastnet import ResponseTable, UDPServer
    from beastnet.serve.assets import ASSETS, random_walk

    feed = random_walk()
    table = ResponseTable(next(feed))
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(1.0 / args.feed_rounds_per_s):
            table.update(next(feed))

    server = UDPServer(table, sockets=args.sockets, cpu_steering=not args.no_steering)
    with server:
        feeder = threading.Thread(target=publish, name="beastnet-demo-feed", daemon=True)
        feeder.start()
        host, port = server.address[:2]
        info = server.stats()
        print(f"beastnet demo: {len(table)} assets on udp://{host}:{port}, "
              f"{info['sockets']} reader thread(s), CPU steering: {info['steering']['reason']}, "
              f"feed: {args.feed_rounds_per_s:g} rounds/s", flush=True)
        load_argv = ["load", f"{host}:{port}", "--keys", ",".join(ASSETS),
                     "--max-level", str(args.max_level)]
        if args.max_level <= 6:
            load_argv.append("--quick")
        else:
            load_argv.append("--ramp")
        # The report is written once the server's counters are in: the load
        # leaves its JSON in a scratch file, completed below.
        scratch = None
        if args.json or args.html:
            fd, scratch = tempfile.mkstemp(suffix=".json", prefix="beastnet-demo-")
            os.close(fd)
            load_argv += ["--json", scratch]
        try:
            from beastnet.cli import main
            status = main(load_argv)
        finally:
            stop.set()
            feeder.join()
        totals = server.stats()["totals"]
    batches = totals["rx_batches"] or 1
    writes = table_writes(table)
    line = (f"server: {totals['rx_packets']:,} requests, {totals['hits']:,} hits, "
            f"{totals['bad_requests']} bad, {totals['send_errors']} send errors, "
            f"{totals['kernel_drops']} kernel drops, {totals['rx_packets'] / batches:.1f} datagrams "
            f"per recvmmsg; table written {writes:,} times during the run")
    print(line)
    if scratch is not None:
        from beastnet.loadgen import outputs, report
        try:
            full = report.read_report(scratch)
            full["server_totals"] = {name: totals[name] for name in DEMO_SERVER_COUNTERS}
            full["server_totals"]["table_writes"] = writes
            outputs.write_outputs(full, report.format_report(full) + "\n" + line,
                                 json_path=args.json, html_path=args.html)
        except (OSError, ValueError) as exc:
            print(f"beastnet demo: cannot write the report: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            os.unlink(scratch)
    return status

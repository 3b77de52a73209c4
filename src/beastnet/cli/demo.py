"""`beastnet demo`: serve 150 assets and ramp a load against them."""
from __future__ import annotations

import argparse
from typing import Any



DEMO_EPILOG = """\
Starts the UDP price server for 150 assets on 127.0.0.1 (a simulated feed
re-publishing every price 10 times a second), runs the quick ramp (levels 1-6
of `beastnet load --help`) against it with the native load generator, prints the
per-level table and the server's counters, and exits 0 when every level passes."""


def add_demo_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="serve 150 assets, ramp a load against them, print the report",
                       description="The whole job in one command.", epilog=DEMO_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-level", type=int, default=6, help="last ramp level (default 6; 13 = full)")
    p.add_argument("--sockets", type=int, help="server sockets (default: one per CPU)")
    p.add_argument("--no-steering", action="store_true", help="turn CPU steering off")
    p.add_argument("--updates-per-s", type=float, default=10.0, help="feed rounds per second")
    p.add_argument("--json", help="write the JSON report here")
    p.add_argument("--html", help="write the HTML/SVG report here")
    p.set_defaults(func=cmd_demo)


def table_writes(table: Any) -> int:
    """Writes published so far: the newest entry's version is the write count."""
    return max((entry.version for key in table.keys() if (entry := table.entry(key))), default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    import threading

    from beastnet import ResponseTable, UDPServer
    from beastnet.serve.assets import ASSETS, random_walk

    feed = random_walk()
    table = ResponseTable(next(feed))
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(1.0 / args.updates_per_s):
            table.update(next(feed))

    server = UDPServer(table, sockets=args.sockets, cpu_steering=not args.no_steering)
    with server:
        feeder = threading.Thread(target=publish, name="beastnet-demo-feed", daemon=True)
        feeder.start()
        host, port = server.address[:2]
        info = server.stats()
        print(f"beastnet demo: {len(table)} assets on udp://{host}:{port}, "
              f"{info['sockets']} reader thread(s), CPU steering: {info['steering']['reason']}, "
              f"feed: {args.updates_per_s:g} rounds/s", flush=True)
        load_argv = ["load", f"{host}:{port}", "--keys", ",".join(ASSETS),
                     "--max-level", str(args.max_level)]
        if args.max_level <= 6:
            load_argv.append("--quick")
        else:
            load_argv.append("--ramp")
        for flag in ("json", "html"):
            if getattr(args, flag):
                load_argv += [f"--{flag}", getattr(args, flag)]
        try:
            from beastnet.cli import main
            status = main(load_argv)
        finally:
            stop.set()
            feeder.join()
        totals = server.stats()["totals"]
    batches = totals["rx_batches"] or 1
    print(f"server: {totals['rx_packets']:,} requests, {totals['hits']:,} hits, "
          f"{totals['bad_requests']} bad, {totals['send_errors']} send errors, "
          f"{totals['kernel_drops']} kernel drops, {totals['rx_packets'] / batches:.1f} datagrams "
          f"per recvmmsg; table written {table_writes(table):,} times during the run")
    return status

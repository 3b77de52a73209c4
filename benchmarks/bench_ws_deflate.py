"""WebSocket fan-out with permessage-deflate: server CPU per delivered message
with compression vs without, beastnet (deflated once per publication) vs
uWebSockets through socketify (SHARED_COMPRESSOR), in one run.

    python benchmarks/bench_ws_deflate.py --peer-python /tmp/peers-venv/bin/python
    python benchmarks/bench_ws_deflate.py --conns 200 --duration 3    # a smaller, shorter run

Workload (the issue's): 1,000 connections x 150 symbols x 10 rounds/s, ~2 KB
bodies (`peers/ws_feed.py --body-bytes 2048`: an order book whose digits change,
~61 % saved by deflate alone), half of the connections offering
permessage-deflate (`clients/ws_fanout_client.c --deflate-every 2`, which
inflates what comes deflated; with --no-inflate it only counts such frames, so
that its own inflate CPU cannot slow its reading and make the servers queue).  Each server runs twice: compression off (the
offer is declined, every message plain) and on (beastnet: `compress_min_bytes`
1024; socketify: `CompressOptions.SHARED_COMPRESSOR`).  Rounds are interleaved
(beastnet off, on, socketify off, on; --repeat times) and the median run shown.
The figure is server CPU (schedstat of all its threads, publisher included)
per delivered message; "on / off" is the compression cost on each server.
The client's compressed-frame counts say which messages came deflated, and for
beastnet the server's own counters say how many deflates it ran
(`ws_deflated`: per publication, not per subscriber) and their CPU.

Limits: client and servers share the machine's cores, so at this workload the
delivered rate is bounded by whichever side runs out of CPU first; CPU per
delivered message is the comparable figure.  Loopback only.  Other work on the
machine moves every figure: the load average is printed beside the results.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_DIR, machine_info  # noqa: E402
from bench_ws import (ROWS, UNIVERSE, build_client, fanout, python_for,  # noqa: E402
                      raise_nofile)

import orjson  # noqa: E402


def one(key: str, python: str, exe: Path, deflate: bool, args: argparse.Namespace) -> dict:
    server_args = ["--body-bytes", str(args.body_bytes)] + (["--deflate"] if deflate else [])
    r = fanout(ROWS[key], python, exe, args.conns, args.symbols, args.rate, args,
               server_args=server_args,
               client_args=["--deflate-every", str(args.deflate_every),
                            "--no-inflate", "1" if args.no_inflate else "0"])
    c = r["client"]
    r["deflate"] = deflate
    r["load_average"] = os.getloadavg()[0]
    r["compressed_share"] = c.get("compressed", 0) / r["delivered"] if r["delivered"] else 0.0
    r["wire_saved"] = (1 - c["wire_bytes"] / c["inflated_bytes"]) if c.get("inflated_bytes") \
        else None
    totals = (r.get("server_stats") or {}).get("totals") or {}
    if totals.get("ws_deflated"):
        r["server_deflates"] = totals["ws_deflated"]
        r["deflate_us_each"] = totals["ws_deflate_cpu_ns"] / totals["ws_deflated"] / 1e3
        published = (r["server_stats"].get("rounds") or 0) * args.symbols_published
        r["deflates_per_publication"] = totals["ws_deflated"] / published if published else None
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="beastnet,socketify")
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--symbols", type=int, default=150)
    p.add_argument("--rate", default="10")
    p.add_argument("--body-bytes", type=int, default=2048)
    p.add_argument("--deflate-every", type=int, default=2,
                   help="connection i offers deflate when i %% K == 0 (2: half)")
    p.add_argument("--no-inflate", action="store_true",
                   help="the client counts deflated frames without inflating them (its inflate "
                        "CPU then cannot slow its reading); their latency is not measured")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--max-server-rss-mb", type=float, default=3072)
    p.add_argument("--peer-python", action="append", default=[])
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_ws_deflate.json"))
    args = p.parse_args(argv)
    args.symbols_published = UNIVERSE        # every round publishes every symbol
    raise_nofile()
    exe = build_client(REPO_DIR / "reports" / "bin")
    machine = machine_info()
    print(f"# bench_ws_deflate: {machine['nproc']} CPUs, {machine['cpu_model']}, load "
          f"{' '.join(map(str, machine['loadavg_at_start']))} at start; {args.conns} conns x "
          f"{args.symbols} symbols @ {args.rate}/s, {args.body_bytes} B bodies, 1 in "
          f"{args.deflate_every} connections offering deflate; {args.duration:g} s measured",
          file=sys.stderr)
    candidates = args.peer_python + [sys.executable]
    runs: dict[tuple[str, bool], list[dict]] = {}
    keys = []
    for key in args.servers.split(","):
        py = python_for(ROWS[key].module, candidates)
        if py is None:
            print(f"  skipping {key}: no interpreter among {candidates} imports "
                  f"{ROWS[key].module}", file=sys.stderr)
            continue
        keys.append((key, py))
    for n in range(args.repeat):
        for key, py in keys:
            for deflate in (False, True):
                r = one(key, py, exe, deflate, args)
                runs.setdefault((key, deflate), []).append(r)
                print(f"  [{n + 1}/{args.repeat}] {key:<9} deflate {'on ' if deflate else 'off'}"
                      f" {r['msgs_per_s']:>11,.0f} msg/s  {r['server_cpu_us_per_msg']:.3f} us "
                      f"CPU/msg  compressed {r['compressed_share']:.0%}  load "
                      f"{r['load_average']:.1f}", file=sys.stderr)
    median = {k: sorted(v, key=lambda r: r["server_cpu_us_per_msg"])[len(v) // 2]
              for k, v in runs.items()}
    print("| server | compression | delivered msg/s | server CPU µs/msg | on/off | "
          "compressed msgs | saved on the wire | deflates by the server (µs each) | "
          "p50 / p99 ms | gaps % | load avg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, _ in keys:
        off = median.get((key, False))
        for deflate in (False, True):
            r = median.get((key, deflate))
            if r is None:
                continue
            ratio = (f"{r['server_cpu_us_per_msg'] / off['server_cpu_us_per_msg']:.2f}x"
                     if deflate and off else "-")
            saved = f"{r['wire_saved']:.0%}" if r.get("wire_saved") is not None else "-"
            defl = (f"{r['server_deflates']:,} = {r['deflates_per_publication']:.2f} per "
                    f"publication ({r['deflate_us_each']:.1f})"
                    if r.get("deflates_per_publication") else "-")
            print(f"| {ROWS[key].label} | {'on' if deflate else 'off'} | "
                  f"{r['msgs_per_s']:,.0f} | {r['server_cpu_us_per_msg']:.3f} | {ratio} | "
                  f"{r['compressed_share']:.0%} | {saved} | {defl} | "
                  f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['gap_pct']:.1f} | "
                  f"{r['load_average']:.1f} |")
    b_on, s_on = median.get(("beastnet", True)), median.get(("socketify", True))
    if b_on and s_on:
        print(f"\nbeastnet / uWebSockets, server CPU per delivered message with compression: "
              f"{b_on['server_cpu_us_per_msg'] / s_on['server_cpu_us_per_msg']:.2f}x")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"machine": machine, "args": vars(args),
                                  "runs": {f"{k}:{'on' if d else 'off'}": v
                                           for (k, d), v in runs.items()}},
                                 default=str, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

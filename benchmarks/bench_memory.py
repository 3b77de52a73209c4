"""Memory: RSS of the UDP server holding 10,000 keys of 120-byte answers.

    PYTHONPATH=src python benchmarks/bench_memory.py [--keys 10000] [--body-bytes 120]
        [--load-s 3] [--no-peers] [--json out.json]

For each server (beastnet 2 readers, and the asyncio/uvloop peers for
comparison, plus beastnet with 1 key as the interpreter-and-threads baseline):
start it, read VmRSS once it has printed its port (idle), drive it for
`--load-s` seconds over all keys with the shared client (the readers' batch
buffers and the socket paths get touched), read VmRSS again and VmHWM (the
peak).  Target from the issue: beastnet under 50 MB RSS.

Limits: RSS counts resident pages of the whole process, the interpreter and
shared libraries included (about 20 MB of it is CPython, uvloop and
orjson); kernel socket buffers are not process memory and do not show up.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (BENCH_DIR, REPO_DIR, asset_names, machine_info,  # noqa: E402
                     proc_status_kb, start_server, udp_probe)
from udp_compare import add_client_args, make_client  # noqa: E402

import orjson  # noqa: E402

PY = sys.executable
TARGET_MB = 50.0


def measure(name: str, argv: list[str], keys: list[str], client, load_s: float) -> dict:
    server = start_server(name, argv)
    try:
        reply = udp_probe(server.port, b"@m " + keys[-1].encode() + b"\n")
        assert reply.startswith(b"@m {"), reply[:60]
        time.sleep(0.5)                 # let start-up allocations settle
        idle_kb = proc_status_kb(server.pid, "VmRSS")
        run = client.run(server.port, keys, load_s, 0.5, False) if load_s > 0 else None
        loaded_kb = proc_status_kb(server.pid, "VmRSS")
        peak_kb = proc_status_kb(server.pid, "VmHWM")
    finally:
        stats = server.stop()
    return {
        "server": name,
        "cmd": shlex.join(argv),
        "keys": len(keys),
        "rss_idle_mb": idle_kb / 1024,
        "rss_after_load_mb": loaded_kb / 1024,
        "rss_peak_mb": peak_kb / 1024,
        "load_rps": run.rps if run else None,
        "load_received": run.received if run else None,
        "table_memory": (stats or {}).get("table_memory"),
        "heavy_modules": (stats or {}).get("heavy_modules"),
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--body-bytes", type=int, default=120)
    p.add_argument("--load-s", type=float, default=3.0, help="seconds of load (0 = idle only)")
    p.add_argument("--no-peers", action="store_true", help="beastnet only")
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_memory.json"))
    add_client_args(p)
    args = p.parse_args(argv)

    client = make_client(args)
    keys = asset_names(args.keys)
    table_args = ["--keys", str(args.keys), "--body-bytes", str(args.body_bytes)]
    bn = str(BENCH_DIR / "servers" / "beastnet_udp.py")
    peer = str(BENCH_DIR / "peers" / "udp_asyncio.py")
    servers = [
        ("beastnet, 1 key (baseline)", [PY, bn, "--sockets", "2", "--keys", "1",
                                        "--body-bytes", str(args.body_bytes)], keys[:1]),
        ("beastnet, 2 readers", [PY, bn, "--sockets", "2", *table_args], keys),
    ]
    if not args.no_peers:
        servers += [
            ("asyncio peer", [PY, peer, "--loop", "asyncio", *table_args], keys),
            ("uvloop peer", [PY, peer, "--loop", "uvloop", *table_args], keys),
        ]
    rows = [measure(name, cmd, k, client, args.load_s) for name, cmd, k in servers]

    print(f"| server | keys x body | RSS idle MB | RSS after {args.load_s:g} s load MB "
          f"| peak (VmHWM) MB | load req/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        rps = f"{r['load_rps']:,.0f}" if r["load_rps"] is not None else "-"
        print(f"| {r['server']} | {r['keys']:,} x {args.body_bytes} B | {r['rss_idle_mb']:.1f} "
              f"| {r['rss_after_load_mb']:.1f} | {r['rss_peak_mb']:.1f} | {rps} |")
    bn_row = rows[1]
    verdict = "pass" if bn_row["rss_peak_mb"] < TARGET_MB else "FAIL"
    print(f"\nbeastnet peak RSS {bn_row['rss_peak_mb']:.1f} MB with {args.keys:,} keys: "
          f"{verdict} (target < {TARGET_MB:g} MB); table itself: {bn_row['table_memory']}")
    if bn_row["heavy_modules"]:
        print(f"the server process imported {', '.join(bn_row['heavy_modules'])} "
              "(numpy alone is ~13 MB RSS and an OpenBLAS thread here)")

    doc = {"benchmark": "bench_memory", "command": shlex.join([Path(PY).name] + sys.argv),
           "machine": machine_info(), "client": client.describe(), "rows": rows,
           "target_mb": TARGET_MB, "verdict": verdict}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

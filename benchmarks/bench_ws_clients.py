"""Messages received per client CPU-second: beastnet's native WebSocket
generator against a `websockets` client and a picows client written the way
the seed harnesses write them (one asyncio task per connection, every
message parsed as JSON and its latency taken), all on the same beastnet feed.

    PYTHONPATH=src python benchmarks/bench_ws_clients.py [--duration 5] [--connections 50]

The server (its own process) serves `--symbols` symbols and rewrites each
one every `--interval-ms`, with a "ts" stamp (ms since the epoch).  Each
client runs as its own process, subscribed to every symbol on every
connection, for `--duration` s; its CPU (user+sys, whole process, from
wait4) divides the messages it received.  The server's CPU over the same
span is shown too: the generator must stay below it.  Targets (issue 12):
>= 10x websockets, >= 3x picows.  On a shared 2-core machine absolute
figures move with everything else; compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import child_env, proc_cpu_s
from bench_loadgen import run_child

SERVER = r"""
import sys, threading, time, orjson
from beastnet import HTTPServer, ResponseTable, WebSocketOptions
n, interval = int(sys.argv[1]), float(sys.argv[2]) / 1e3
syms = [f"S{i:03d}" for i in range(n)]
t = ResponseTable({s: orjson.dumps({"s": s, "ts": time.time_ns() // 10**6}) for s in syms})
with HTTPServer(t, "127.0.0.1", 0, threads=1, websocket=WebSocketOptions()) as srv:
    print(srv.address[1], flush=True)
    while sys.stdin.readable():
        for s in syms:
            t.set(s, orjson.dumps({"s": s, "ts": time.time_ns() // 10**6, "price": 1.5}))
        time.sleep(interval)
"""

WEBSOCKETS_CLIENT = r"""
import asyncio, json, sys, time, websockets
port, conns, dur, syms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(",")
count = 0
lat = []
async def one():
    global count
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream", max_queue=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "symbols": syms}))
        async for msg in ws:
            m = json.loads(msg)
            if "ts" in m:
                lat.append(time.time() * 1000 - m["ts"])
            count += 1
async def main():
    tasks = [asyncio.create_task(one()) for _ in range(conns)]
    await asyncio.sleep(dur)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
print(json.dumps({"received": count}))
"""

PICOWS_CLIENT = r"""
import asyncio, json, sys, time
from picows import WSFrame, WSListener, WSMsgType, ws_connect
port, conns, dur, syms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(",")
count = 0
lat = []
class L(WSListener):
    def on_ws_connected(self, transport):
        transport.send(WSMsgType.TEXT, json.dumps({"op": "subscribe", "symbols": syms}).encode())
    def on_ws_frame(self, transport, frame: WSFrame):
        global count
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        m = json.loads(frame.get_payload_as_utf8_text())
        if "ts" in m:
            lat.append(time.time() * 1000 - m["ts"])
        count += 1
async def main():
    pairs = [await ws_connect(L, f"ws://127.0.0.1:{port}/v1/stream") for _ in range(conns)]
    await asyncio.sleep(dur)
    for transport, _ in pairs:
        transport.disconnect()
asyncio.run(main())
print(json.dumps({"received": count}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--interval-ms", type=float, default=2.0)
    ap.add_argument("--skip", default="", help="comma-separated clients to leave out")
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.symbols),
                               str(args.interval_ms)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=child_env(), text=True)
    rows = []
    try:
        port = int(server.stdout.readline())
        syms = ",".join(f"S{i:03d}" for i in range(args.symbols))
        common = [str(port), str(args.connections), str(args.duration), syms]
        clients = {
            "beastnet": [sys.executable, "-m", "beastnet", "load",
                         f"ws://127.0.0.1:{port}/v1/stream", "-c", str(args.connections),
                         "-t", "1", "--symbols", syms, "-d", str(args.duration), "--warmup",
                         "0", "-q", "--json", "/dev/stdout"],
            "websockets": [sys.executable, "-c", WEBSOCKETS_CLIENT] + common,
            "picows": [sys.executable, "-c", PICOWS_CLIENT] + common,
        }
        for name, cmd in clients.items():
            if name in args.skip.split(","):
                continue
            srv0 = proc_cpu_s(server.pid)
            out, cpu_s, wall_s = run_child(cmd)
            srv_cpu = proc_cpu_s(server.pid) - srv0
            data = json.loads(out)
            received = data["result"]["received"] if name == "beastnet" else data["received"]
            # beastnet also reports its native threads' CPU in the measured
            # window: the process figure includes the interpreter's start-up.
            native = data["result"]["cpu_s"] if name == "beastnet" else None
            rows.append({"client": name, "received": received, "client_cpu_s": cpu_s,
                         "native_thread_cpu_s": native,
                         "wall_s": wall_s, "server_cpu_s": srv_cpu,
                         "msgs_per_client_cpu_s": received / cpu_s if cpu_s else None,
                         "client_ns_per_msg": cpu_s / received * 1e9 if received else None,
                         "server_ns_per_msg": srv_cpu / received * 1e9 if received else None})
    finally:
        server.stdin.close()
        server.terminate()
        server.wait(10)
    base = next((r for r in rows if r["client"] == "beastnet"), None)
    print(f"{'client':12} {'received':>10} {'client CPU s':>12} {'msgs/CPU-s':>12} "
          f"{'client ns/msg':>13} {'server ns/msg':>13} {'beastnet x':>10}")
    for r in rows:
        ratio = (base["msgs_per_client_cpu_s"] / r["msgs_per_client_cpu_s"]
                 if base and r["msgs_per_client_cpu_s"] else None)
        print(f"{r['client']:12} {r['received']:>10} {r['client_cpu_s']:>12.3f} "
              f"{(r['msgs_per_client_cpu_s'] or 0):>12.0f} {(r['client_ns_per_msg'] or 0):>13.0f} "
              f"{(r['server_ns_per_msg'] or 0):>13.0f} "
              f"{'-' if ratio is None else f'{ratio:.1f}':>10}")
    if base and base["native_thread_cpu_s"] and base["received"]:
        print(f"beastnet native threads alone: {base['native_thread_cpu_s']:.3f} s = "
              f"{base['native_thread_cpu_s'] / base['received'] * 1e9:.0f} ns/msg")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""The stress ladder's probe dimensions, beastnet's native client against a
`websockets` client doing the same work, on the same servers in the same run.

    PYTHONPATH=src python benchmarks/bench_ws_stress.py [--duration 3] [--connections 50]

Three workloads, each run by both clients, one after the other, with
`--connections` connections for `--duration` s:
  - round trip: `{"op":"snapshot","symbols":["S000"]}` to beastnet's feed,
    the answer awaited, again (one request in flight per connection);
  - subscribe/unsubscribe: subscribe, await `"op":"subscribed"`,
    unsubscribe, await `"op":"unsubscribed"`, again;
  - compression: a `websockets` server (its own process) pushes a stamped
    1 KiB JSON message every `--interval-ms` on each connection with
    permessage-deflate; both clients negotiate it and inflate.
Then `beastnet ws stress --levels` (the ladder itself) against the feed with
a key allowed the feed and one not, and prints its table.

Per workload: operations (acknowledged answers or messages), their p95, the
client's CPU (whole process, from wait4) and operations per client
CPU-second, and the ratio.  On a shared 2-core machine absolute figures move
with everything else; compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import child_env
from bench_loadgen import run_child

FEED = r"""
import sys, time, orjson
from beastnet import APIKeyTable, HTTPServer, ResponseTable, WebSocketOptions
syms = [f"S{i:03d}" for i in range(20)]
t = ResponseTable({s: orjson.dumps({"s": s, "ts": time.time_ns() // 10**6}) for s in syms})
keys = APIKeyTable()
keys.set("bench-allowed-01", ws_allowed=True)
keys.set("bench-denied-001", ws_allowed=False)
with HTTPServer(t, "127.0.0.1", 0, threads=1, api_keys=keys, websocket=WebSocketOptions()) as srv:
    print(srv.address[1], flush=True)
    while sys.stdin.readable():
        for s in syms:
            t.set(s, orjson.dumps({"s": s, "ts": time.time_ns() // 10**6, "price": 1.5}))
        time.sleep(0.01)
"""

DEFLATE_SERVER = r"""
import asyncio, sys, time, orjson, websockets
interval = float(sys.argv[1]) / 1e3
async def push(ws):
    n = 0
    try:
        await ws.recv()
        while True:
            n += 1
            await ws.send(orjson.dumps({"ts": time.time_ns() // 10**6, "seq": n, "s": "S000",
                                        "book": [[100.0 + i / 100, i] for i in range(60)]}).decode())
            await asyncio.sleep(interval)
    except websockets.ConnectionClosed:
        pass                            # the client's run ended
async def main():
    async with websockets.serve(push, "127.0.0.1", 0, ping_interval=None) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""

BEASTNET_CLIENT = r"""
import json, sys
from beastnet.loadgen.ws.run import run_ws_load
from beastnet.loadgen.ws.config import WSLoadConfig
port, conns, dur, work = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sym = '["S000"]'
kw = dict(port=port, connections=conns, duration_s=dur, warmup_s=0.5, api_key="bench-allowed-01",
          ts_key=None, subscribe_template="")
if work == "round_trip":
    kw.update(probe_messages=['{"op":"snapshot","symbols":%s}' % sym])
elif work == "subscribe":
    kw.update(probe_messages=['{"op":"subscribe","symbols":%s}' % sym,
                              '{"op":"unsubscribe","symbols":%s}' % sym],
              probe_answers=['"op":"subscribed"', '"op":"unsubscribed"'])
else:
    kw.update(path="/", deflate=True, ts_key="ts", subscribe_template='{"sub":{symbols}}')
r = run_ws_load(WSLoadConfig(**kw))
e = r.extra
ops = e["probe_answers"] if work != "compression" else r.received
p95 = e["probe_ms"]["p95"] if work != "compression" else r.percentile(95) / 1e6
print(json.dumps({"ops": ops, "p95_ms": p95, "native_cpu_s": r.cpu_s,
                  "saved": 1 - e["deflated_bytes"] / e["inflated_bytes"] if e["inflated_bytes"] else None,
                  "inflate_us_per_kib": e["inflate_ns"] / 1e3 / (e["inflated_bytes"] / 1024)
                  if e["inflated_bytes"] else None}))
"""

# The way the seed harnesses write a client: one asyncio task per
# connection, every message parsed as JSON.
WEBSOCKETS_CLIENT = r"""
import asyncio, json, sys, time, websockets
port, conns, dur, work = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ops, lat, measuring = 0, [], False
async def one():
    global ops
    path = "/" if work == "compression" else "/v1/stream"
    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", max_queue=None,
                                  additional_headers={"X-API-Key": "bench-allowed-01"}) as ws:
        if work == "compression":
            await ws.send(json.dumps({"sub": ["S000"]}))
            async for msg in ws:
                m = json.loads(msg)
                if measuring:
                    ops += 1
                    lat.append(time.time() * 1000 - m["ts"])
            return
        steps = ([({"op": "snapshot", "symbols": ["S000"]}, None)] if work == "round_trip" else
                 [({"op": "subscribe", "symbols": ["S000"]}, "subscribed"),
                  ({"op": "unsubscribe", "symbols": ["S000"]}, "unsubscribed")])
        while True:
            for request, ack in steps:
                t0 = time.perf_counter()
                await ws.send(json.dumps(request))
                while True:
                    m = json.loads(await ws.recv())
                    if ack is None or m.get("op") == ack:
                        break
                if measuring:
                    ops += 1
                    lat.append((time.perf_counter() - t0) * 1000)
async def main():
    global measuring
    tasks = [asyncio.create_task(one()) for _ in range(conns)]
    await asyncio.sleep(0.5)
    measuring = True
    await asyncio.sleep(dur)
    measuring = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
lat.sort()
print(json.dumps({"ops": ops, "p95_ms": lat[int(len(lat) * 0.95)] if lat else None}))
"""


def _server(script: str, *argv: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env(), text=True)
    return proc, int(proc.stdout.readline())


def _stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.terminate()
    proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--levels", default="10,100,500",
                    help="connections per level of the ladder run (default %(default)s)")
    args = ap.parse_args()
    feed, feed_port = _server(FEED)
    deflating, deflate_port = _server(DEFLATE_SERVER, str(args.interval_ms))
    rows = []
    try:
        for work in ("round_trip", "subscribe", "compression"):
            port = deflate_port if work == "compression" else feed_port
            common = [str(port), str(args.connections), str(args.duration), work]
            for name, script in (("beastnet", BEASTNET_CLIENT), ("websockets", WEBSOCKETS_CLIENT)):
                out, cpu_s, _ = run_child([sys.executable, "-c", script] + common)
                data = json.loads(out)
                rows.append(dict(data, work=work, client=name, cpu_s=cpu_s,
                                 ops_per_cpu_s=data["ops"] / cpu_s if cpu_s else None))
        ladder, _, _ = run_child([
            sys.executable, "-m", "beastnet", "ws", "stress",
            f"ws://127.0.0.1:{feed_port}/v1/stream", "--symbols", "S000,S001",
            "--levels", args.levels, "-d", str(args.duration), "--warmup", "0.5",
            "--api-key", "bench-allowed-01", "--denied-key", "bench-denied-001",
            "--dimensions", "round_trip,subscribe,permission", "-q", "--json", "/dev/stdout"])
    finally:
        _stop(feed)
        _stop(deflating)
    print(f"{'workload':12} {'client':10} {'ops':>9} {'p95 ms':>8} {'CPU s':>7} "
          f"{'ops/CPU-s':>10} {'beastnet x':>10}  notes")
    for r in rows:
        base = next(b for b in rows if b["work"] == r["work"] and b["client"] == "beastnet")
        ratio = base["ops_per_cpu_s"] / r["ops_per_cpu_s"] if r["ops_per_cpu_s"] else None
        notes = ""
        if r.get("saved") is not None:
            notes = f"saved {r['saved']:.1%}, inflate {r['inflate_us_per_kib']:.2f} us/KiB"
        if r.get("native_cpu_s") is not None:
            notes += f"{', ' if notes else ''}native threads {r['native_cpu_s']:.3f} s"
        print(f"{r['work']:12} {r['client']:10} {r['ops']:>9} "
              f"{'-' if r['p95_ms'] is None else format(r['p95_ms'], '.3f'):>8} "
              f"{r['cpu_s']:>7.3f} {(r['ops_per_cpu_s'] or 0):>10.0f} "
              f"{'-' if ratio is None else f'{ratio:.1f}':>10}  {notes}")
    body = json.loads(ladder)
    print("\nbeastnet ws stress (round trip, subscribe/unsubscribe, permission):")
    print(f"{'conns':>6} {'rt p95':>8} {'rt/s':>9} {'sub/s':>9} {'sub p95':>8} {'refused/s':>9} "
          f"{'ref p95':>8} {'granted':>7} verdict")
    for lv in body["levels"]:
        m = lv["metrics"]
        if lv["verdict"] == "skipped":
            print(f"{lv['connections']:>6} SKIPPED: {lv['reasons'][0]}")
            continue
        print(f"{lv['connections']:>6} {m['round_trip_p95_ms']:>8.3f} {m['round_trips_per_s']:>9.0f} "
              f"{m['subscribe_ops_per_s']:>9.0f} {m['subscribe_p95_ms']:>8.3f} "
              f"{m['refusals_per_s']:>9.0f} {m['refusal_p95_ms']:>8.3f} "
              f"{m['wrongly_granted']:>7} {lv['verdict'].upper()}")
    d = body["degradation"]
    print(f"most degraded: {d['most_degraded']}  "
          + "  ".join(f"{k} {v:.0%}" for k, v in d["by_dimension"].items() if v is not None))
    print(json.dumps({"clients": rows, "ladder_levels": [lv["metrics"] for lv in body["levels"]]}))


if __name__ == "__main__":
    main()

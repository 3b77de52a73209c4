"""Cluster mode's cost: UDP req/s of `beastnet serve --redis` (leased limits)
against the same server with local limits, same key mix, passes alternating
in one run (target >= 0.9x); /admin/cluster-stats latency with 10 nodes'
snapshots in Redis; Redis commands per second per node at full load and at a
tenth of it (INFO commandstats before and after), which should not follow
the request rate.

    PYTHONPATH=src python benchmarks/bench_cluster.py --duration 3 --repeat 2

Key mix: a key of a tier limited at 5,000,000 req/s (leased in cluster mode,
its limit never reached, so every request pays the lease) and a partner key
(no limit, counted).  Needs redis-server on PATH; one started here on a free
loopback port, stopped by PID.
"""
from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson  # noqa: E402
from _common import BENCH_DIR, child_env, free_port, machine_info  # noqa: E402

from beastnet.loadgen import UDPLoadConfig, run_udp_load  # noqa: E402
from beastnet.serve.assets import ASSETS  # noqa: E402

TIERS = "[tiers.fast]\nqps = 5000000\nburst = 100000\nmonthly_cap = 0\n"
KEYS = {"fast-key-0123456789": "fast", "partner-key-0123456789": "partner"}
SNAPSHOT_NODES = 10


class Serve:
    """`beastnet serve` in its own session; its ready line gives the ports."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beastnet", "serve", "--profile", "dev", "--log-level", "info",
             "--udp-port", "0", "--http-port", "0", "--admin-port", "0",
             "--config", str(tmp / "tiers.toml"), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in self.log_path.read_bytes().splitlines():
                if line.startswith(b"{") and orjson.loads(line).get("event") == "ready":
                    ready = orjson.loads(line)
                    self.udp_port, self.admin_port = ready["udp_port"], ready["admin_port"]
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.close()


def redis_calls(client) -> int:
    """Commands Redis has run, the INFO calls that read this excluded."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def load_pass(port: int, key: str, duration: float, warmup: float,
              rate: Optional[float] = None) -> dict:
    cfg = UDPLoadConfig(host="127.0.0.1", port=port, keys=list(ASSETS), sockets=16, threads=1,
                        window=8, duration_s=duration, warmup_s=warmup, api_key=key, rate=rate)
    result = run_udp_load(cfg)
    return {"rps": result.rps, "received": result.received, "errors": result.error_replies}


def write_snapshots(client, n: int) -> None:
    """n synthetic nodes' snapshots, shaped as a node writes them."""
    from beastnet.serve.cluster import NODES, SNAPSHOT, SNAPSHOT_COUNTERS
    counters = {name: 1000 + i for i, (name, _, _) in enumerate(SNAPSHOT_COUNTERS)}
    body = orjson.dumps({"counters": counters, "rates_per_s": {k: 10.0 for k in counters},
                         "profile": "production", "mode": "redis", "interval_s": 3.0, "pid": 1})
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            node = f"synthetic-{i}"
            pipe.set(SNAPSHOT + node, body, px=60_000)
            pipe.hset(NODES, node, orjson.dumps({"interval_s": 3.0, "ttl_s": 60.0}))
        pipe.execute()


def cluster_stats_latency(admin_port: int, requests: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    samples, nodes, read_ms = [], 0, []
    try:
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.request("GET", "/admin/cluster-stats")
            body = conn.getresponse().read()
            samples.append((time.perf_counter() - t0) * 1000.0)
            stats = orjson.loads(body)
            nodes = len(stats["per_node"])
            read_ms.append(stats["read_ms"])
    finally:
        conn.close()
    samples.sort()
    return {"nodes": nodes, "p50_ms": samples[len(samples) // 2],
            "p99_ms": samples[int(len(samples) * 0.99) - 1],
            "redis_read_p50_ms": statistics.median(read_ms)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-requests", type=int, default=300)
    p.add_argument("--json", default=str(BENCH_DIR.parent / "reports" / "bench_cluster.json"))
    args = p.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("bench_cluster: redis-server is not on PATH", file=sys.stderr)
        return 2
    import redis

    from beastnet.serve.keys import configured_tiers
    from beastnet.serve.stores.sqlite import KeyStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    (tmp / "tiers.toml").write_text(TIERS)
    tiers = configured_tiers({"fast": {"qps": 5e6, "burst": 100000, "monthly_cap": 0}})
    for name in ("local", "cluster"):
        with KeyStore(str(tmp / f"{name}.db"), tiers) as store:
            for key, tier in KEYS.items():
                store.add(tier, key=key)
    port = free_port()
    rproc = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    servers: list[Serve] = []
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        local = Serve(tmp, "local", "--keystore", str(tmp / "local.db"))
        servers.append(local)
        cluster = Serve(tmp, "cluster", "--keystore", str(tmp / "cluster.db"),
                        "--redis", f"redis://127.0.0.1:{port}", "--node-id", "bench")
        servers.append(cluster)
        runs: dict[str, list[dict]] = {"local": [], "cluster": []}
        ops: list[dict] = []
        for n in range(args.repeat):
            for key in KEYS:
                # alternate which goes first, so drift on a busy machine spreads over both
                order = [("local", local), ("cluster", cluster)][::1 if n % 2 == 0 else -1]
                for name, server in order:
                    before, t0 = redis_calls(client), time.monotonic()
                    row = load_pass(server.udp_port, key, args.duration, args.warmup)
                    row.update(key=key, pass_=n + 1)
                    if name == "cluster":
                        row["redis_ops_per_s"] = (redis_calls(client) - before) / (
                            time.monotonic() - t0)
                        ops.append({"level": "full", "key": key, "rps": row["rps"],
                                    "ops_per_s": row["redis_ops_per_s"]})
                    runs[name].append(row)
                    print(f"pass {n + 1} {name:<8} {key:<24} {row['rps']:>10,.0f} req/s  "
                          f"errors {row['errors']}"
                          + (f"  redis {row['redis_ops_per_s']:.1f} ops/s"
                             if "redis_ops_per_s" in row else ""), flush=True)
        full = statistics.median(r["rps"] for r in runs["cluster"])
        # the same node at a tenth of its full rate, open loop
        before, t0 = redis_calls(client), time.monotonic()
        tenth = load_pass(cluster.udp_port, "fast-key-0123456789", args.duration, args.warmup,
                          rate=max(1000.0, full / 10))
        ops.append({"level": "tenth", "key": "fast-key-0123456789", "rps": tenth["rps"],
                    "ops_per_s": (redis_calls(client) - before) / (time.monotonic() - t0)})
        print(f"open loop  cluster {tenth['rps']:>10,.0f} req/s  redis "
              f"{ops[-1]['ops_per_s']:.1f} ops/s", flush=True)
        write_snapshots(client, SNAPSHOT_NODES)
        latency = cluster_stats_latency(cluster.admin_port, args.latency_requests)
    finally:
        for server in servers:
            server.stop()
        client.close()
        rproc.kill()
        rproc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    local_rps = statistics.median(r["rps"] for r in runs["local"])
    cluster_rps = statistics.median(r["rps"] for r in runs["cluster"])
    ratio = cluster_rps / local_rps
    # the leased key at both levels: the renewals are what could follow the rate
    full_ops = statistics.median(o["ops_per_s"] for o in ops
                                 if o["level"] == "full" and o["key"] == "fast-key-0123456789")
    print()
    print(f"{'figure':<44} {'cluster':>12} {'local':>12} {'ratio':>7}")
    print(f"{'UDP req/s, median of passes (key mix)':<44} {cluster_rps:>12,.0f} "
          f"{local_rps:>12,.0f} {ratio:>7.3f}   (target >= 0.90)")
    for key, tier in KEYS.items():
        c = statistics.median(r["rps"] for r in runs["cluster"] if r["key"] == key)
        loc = statistics.median(r["rps"] for r in runs["local"] if r["key"] == key)
        label = f"  {tier} key ({'leased' if tier != 'partner' else 'not leased'})"
        print(f"{label:<44} {c:>12,.0f} {loc:>12,.0f} {c / loc:>7.3f}")
    print(f"{'Redis ops/s per node, leased key, full load':<44} {full_ops:>12.1f}")
    print(f"{'Redis ops/s per node, leased key, 1/10 load':<44} {ops[-1]['ops_per_s']:>12.1f} "
          f"{'':>12} {ops[-1]['ops_per_s'] / full_ops if full_ops else 0:>7.3f}")
    print(f"{'/admin/cluster-stats p50 / p99 ms':<44} {latency['p50_ms']:>12.3f} "
          f"{latency['p99_ms']:>12.3f}   ({latency['nodes']} nodes, Redis read p50 "
          f"{latency['redis_read_p50_ms']:.3f} ms)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_bytes(orjson.dumps(
        {"machine": machine_info(), "runs": runs, "ratio": ratio, "redis_ops": ops,
         "cluster_stats": latency}, default=str, option=orjson.OPT_INDENT_2))
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What load agents cost, and whether three agents on one host deliver what
one process with the same threads delivers (issue 28).

    PYTHONPATH=src python benchmarks/bench_agents.py [--duration 8] [--repeat 2]

Everything on loopback: a redis-server, the engine (UDPServer, 2 sockets) in
its own process, `beastnet agent` processes, and this script as the
coordinator.

1. Coordination CPU.  One agent runs a closed-loop UDP run (-t 2, 64 sockets
   x window 32: its highest rate here) twice, once streaming its per-second
   row and histogram to the coordinator and once not.  For each, the agent
   process's CPU over the run (from /proc), the CPU of its generator threads
   (as the run reports them) and the CPU of every other thread of the agent
   (lease renewal, the per-second sampling and push, the job handling): that
   last figure is the coordination's cost, shown as a share of the agent's.
2. Three agents vs one process.  Closed loop, the same total threads and
   sockets: one `beastnet load` process with -t 3 and 48 sockets, then three
   agents with -t 1 and 16 sockets each; the answered req/s of each, and the
   ratio.  Rounds alternate the order; the median ratio is reported.

Limits: a 2-core VM that the server, the generator(s), Redis and other
people's work share; absolute rates move with the machine's load, so compare
rows of one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import free_port

# The engine's process: bench_loadgen's (it prints its port, then answers a
# line on stdin with its counters; here stdin only closes, to stop it).
from bench_loadgen import ENV, SERVER_SCRIPT, SRC, proc_cpu_s


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by thread id, to the nanosecond
    (schedstat's time on a CPU; /proc/PID/stat counts 10 ms ticks, too
    coarse for a few ms a second)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


def start_agent(url: str, name: str, log_dir: str) -> subprocess.Popen:
    log = open(os.path.join(log_dir, f"{name}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "beastnet", "agent", "--redis", url,
                             "--name", name, "-q"], stdout=log, stderr=log, env=ENV)
    log.close()
    return proc


def coordination_cost(url: str, port: int, duration: float, log_dir: str) -> list[dict]:
    from beastnet.loadgen.agents import Coordinator
    from beastnet.loadgen.config import UDPLoadConfig
    agent = start_agent(url, "cost", log_dir)
    rows = []
    try:
        # Pairs in both orders, so a drift of the machine's load favours neither.
        for stream in (True, False, False, True, True, False):
            with Coordinator(url, 1, wait_s=30, stream=stream) as coord:
                cfg = UDPLoadConfig(port=port, keys=["BTC"], threads=2, sockets=64, window=32,
                                    duration_s=duration, warmup_s=0.5)
                before_threads, before = thread_cpu_s(agent.pid), proc_cpu_s(agent.pid)
                r = coord.run(cfg)
                after_threads, after = thread_cpu_s(agent.pid), proc_cpu_s(agent.pid)
            # Threads that lived through the run and are not generator threads:
            # the generator threads are new for each run and gone after it.
            kept = [t for t in after_threads if t in before_threads]
            other = sum(after_threads[t] - before_threads[t] for t in kept)
            total = after - before
            rows.append({"stream": stream, "rps": r.rps, "agent_cpu_s": total,
                         "generator_cpu_s": r.cpu_s, "coordination_cpu_s": other,
                         "coordination_ms_per_s": other / duration * 1e3,
                         "coordination_share": other / total if total else None})
    finally:
        agent.terminate()
        agent.wait(10)
    return rows


def one_process(port: int, duration: float) -> float:
    out = tempfile.mktemp(suffix=".json")
    # Exit 1 (a failing verdict: some loss on a crowded machine) still wrote the report.
    subprocess.run([sys.executable, "-m", "beastnet", "load", f"127.0.0.1:{port}", "-t", "3",
                    "-s", "48", "-w", "32", "-d", str(duration), "--warmup", "0.5", "-q",
                    "--json", out], env=ENV, timeout=duration + 60)
    with open(out, "rb") as f:
        rps = json.load(f)["result"]["rps"]
    os.unlink(out)
    return float(rps)


def three_agents(url: str, port: int, duration: float) -> tuple[float, float]:
    from beastnet.loadgen.agents import Coordinator
    from beastnet.loadgen.config import UDPLoadConfig
    with Coordinator(url, 3, wait_s=30) as coord:
        r = coord.run(UDPLoadConfig(port=port, keys=["BTC"], threads=1, sockets=48, window=32,
                                    duration_s=duration, warmup_s=0.5))
    return r.rps, float(r.extra["start_skew_ms"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("bench_agents: redis-server is not installed", file=sys.stderr)
        return 2
    sys.path.insert(0, SRC)
    work = tempfile.mkdtemp(prefix="bench-agents-")
    rport = free_port()
    url = f"redis://127.0.0.1:{rport}/0"
    redis = subprocess.Popen([redis_server, "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, "2"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=ENV, text=True)
    agents: list[subprocess.Popen] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        time.sleep(0.3)                 # redis-server's listen (the first connect retries)
        print(f"loadavg before: {os.getloadavg()}")
        print("1. coordination CPU (one agent, -t 2, 64 sockets x 32, closed loop)")
        cost = coordination_cost(url, port, args.duration, work)
        for row in cost:
            print(f"   stream={'on ' if row['stream'] else 'off'}  {row['rps']:>10,.0f} req/s  "
                  f"agent CPU {row['agent_cpu_s']:6.2f} s  generator "
                  f"{row['generator_cpu_s']:6.2f} s  other threads "
                  f"{row['coordination_cpu_s']:6.3f} s ({row['coordination_share']:.2%}, "
                  f"{row['coordination_ms_per_s']:.2f} ms/s)")
        for stream in (True, False):
            mine = [r for r in cost if r["stream"] == stream]
            us_per_request = [r["agent_cpu_s"] / (r["rps"] * args.duration) * 1e6 for r in mine]
            print(f"   median stream={'on ' if stream else 'off'}: "
                  f"{statistics.median(r['rps'] for r in mine):,.0f} req/s, agent CPU "
                  f"{statistics.median(us_per_request):.3f} µs/request, other threads "
                  f"{statistics.median(r['coordination_share'] for r in mine):.2%} of it, "
                  f"{statistics.median(r['coordination_ms_per_s'] for r in mine):.2f} ms/s")
        print("2. three agents (-t 1, 16 sockets each) vs one process (-t 3, 48 sockets)")
        agents = [start_agent(url, f"a{i}", work) for i in range(3)]
        ratios = []
        for i in range(args.repeat):
            order = ("one", "three") if i % 2 == 0 else ("three", "one")
            got = {}
            for what in order:
                if what == "one":
                    got["one"] = one_process(port, args.duration)
                else:
                    got["three"], skew = three_agents(url, port, args.duration)
            ratios.append(got["three"] / got["one"])
            print(f"   round {i + 1}: one process {got['one']:>10,.0f} req/s   three agents "
                  f"{got['three']:>10,.0f} req/s   ratio {ratios[-1]:.3f}   "
                  f"start skew {skew:.1f} ms")
        print(f"   median ratio {statistics.median(ratios):.3f}")
        print(f"loadavg after: {os.getloadavg()}")
    finally:
        for p in agents:
            p.terminate()
            p.wait(10)
        if server.stdin is not None:
            server.stdin.close()
        server.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

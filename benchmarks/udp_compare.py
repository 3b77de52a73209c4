"""Side-by-side UDP load benchmark: beastnet against asyncio and uvloop peers.

    PYTHONPATH=src python benchmarks/udp_compare.py [--duration 5] [--warmup 1] [--repeat 3]
        [--client auto|loadgen|asyncio] [--rows asyncio,uvloop,bn1,bn2,bn2s] [--json out.json]

Every row is a server subprocess serving the same 150-asset table
(benchmarks/_common.py), driven by the same client with the same settings in
the same run:

    asyncio   benchmarks/peers/udp_asyncio.py --loop asyncio
    uvloop    benchmarks/peers/udp_asyncio.py --loop uvloop
    bn1       beastnet, 1 reader, no CPU steering
    bn2       beastnet, 2 readers, no CPU steering (kernel reuseport hash)
    bn2s      beastnet, 2 readers, CPU-steered; client threads pinned, one per CPU
    bn2p      (optional) beastnet, 2 readers, no steering, client pinned: isolates steering

Per row: req/s and p50/p99 from the client; the server's own CPU time per
answered request from /proc/<pid>/stat (utime+stime) over the client's
measured window; the client's CPU.  With --repeat N the rows run round-robin
N times (noise from other tenants then spreads over all rows) and the median
run of each row is reported, with the spread.  Output: a markdown table,
ratios vs asyncio and vs uvloop, the issue's targets, and a JSON file.

Why server CPU from /proc and not the client's view: on 2 shared cores the
client and the server compete, so req/s alone rewards whichever leaves more
CPU to the client.  CPU per answered request is the server's intrinsic cost.
On loopback, softirq work (delivering a datagram into the peer's socket) runs
in the *sender's* context, so a server's CPU includes delivering its replies
to the client and the client's CPU includes delivering requests to the server
-- the same for every row, but not the same split as across a real NIC.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (BENCH_DIR, CLOCK_TICKS_PER_S, REPO_DIR, SRC_DIR,  # noqa: E402
                     asset_names, asset_table, machine_info, proc_cpu_s, proc_sched_ns,
                     start_server, udp_probe)

if str(SRC_DIR) not in sys.path:
    sys.path.insert(0, str(SRC_DIR))

import orjson  # noqa: E402

PY = sys.executable
PEER = str(BENCH_DIR / "peers" / "udp_asyncio.py")
BEASTNET = str(BENCH_DIR / "servers" / "beastnet_udp.py")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    argv: tuple
    pin_client: bool = False            # client threads pinned, one per CPU


ROWS = {
    "asyncio": Row("asyncio", "asyncio (stdlib loop)", (PY, PEER, "--loop", "asyncio")),
    "uvloop": Row("uvloop", "uvloop", (PY, PEER, "--loop", "uvloop")),
    "bn1": Row("bn1", "beastnet, 1 reader", (PY, BEASTNET, "--sockets", "1", "--no-steering")),
    "bn2": Row("bn2", "beastnet, 2 readers", (PY, BEASTNET, "--sockets", "2", "--no-steering")),
    "bn2s": Row("bn2s", "beastnet, 2 readers, CPU-steered + pinned client",
                (PY, BEASTNET, "--sockets", "2"), pin_client=True),
    # Not in the default set: separates what steering buys from what pinning
    # the client buys (compare with bn2s).
    "bn2p": Row("bn2p", "beastnet, 2 readers, no steering + pinned client",
                (PY, BEASTNET, "--sockets", "2", "--no-steering"), pin_client=True),
}


# -- clients ---------------------------------------------------------------------

@dataclass
class ClientRun:
    """What every client adapter returns: counts over the measured window."""

    sent: int
    received: int
    lost: int
    rps: float
    p50_ns: float
    p99_ns: float
    cpu_s: float                        # the client's CPU: loadgen = its generator
                                        # threads' CPU clocks; asyncio = each process's
                                        # CPU over its window
    window_ns: tuple                    # measured window, time.monotonic_ns()
    raw: dict = field(default_factory=dict)


class Client(Protocol):
    name: str

    def describe(self) -> dict: ...

    def run(self, port: int, keys: list[str], duration_s: float, warmup_s: float,
            pin: bool) -> ClientRun: ...


class LoadgenClient:
    """beastnet.loadgen: native threads, sendmmsg/recvmmsg, tags, HDR histograms."""

    name = "beastnet.loadgen"

    def __init__(self, sockets: int, threads: int, window: int, batch: int,
                 timeout_ms: int, rate: Optional[float] = None) -> None:
        from beastnet.loadgen import UDPLoadConfig, run_udp_load  # noqa: F401 (fail early)
        self.sockets, self.threads, self.window = sockets, threads, window
        self.batch, self.timeout_ms, self.rate = batch, timeout_ms, rate

    def describe(self) -> dict:
        return {"client": self.name, "sockets": self.sockets, "threads": self.threads,
                "window": self.window, "batch": self.batch, "timeout_ms": self.timeout_ms,
                "loop": f"open, {self.rate:g} req/s" if self.rate else "closed"}

    def run(self, port: int, keys: list[str], duration_s: float, warmup_s: float,
            pin: bool) -> ClientRun:
        from beastnet.loadgen import UDPLoadConfig, run_udp_load
        cfg = UDPLoadConfig(host="127.0.0.1", port=port, keys=keys, weights=None,
                            sockets=self.sockets, threads=self.threads, window=self.window,
                            rate=self.rate, poisson=False, duration_s=duration_s,
                            warmup_s=warmup_s, timeout_ms=self.timeout_ms, batch=self.batch,
                            pin_threads=pin, api_key=None, max_requests=None)
        # The measured window opens warmup_s after the generator threads start.
        # LoadResult gives that start as wall-clock `started_at` (time.time()
        # right before the threads start); translate it to CLOCK_MONOTONIC,
        # the clock the CPU sampler uses, with one offset read now.
        res = run_udp_load(cfg)
        wall_minus_mono = time.time() - time.monotonic()
        start = int((res.started_at - wall_minus_mono + warmup_s) * 1e9)
        raw = res.to_dict(histogram=False)
        raw.pop("timeline", None)
        return ClientRun(sent=res.sent, received=res.received, lost=res.lost, rps=res.rps,
                         p50_ns=float(res.percentile(50)),
                         p99_ns=float(res.latency_ns["p99"]), cpu_s=float(res.cpu_s),
                         window_ns=(start, start + int(res.duration_s * 1e9)), raw=raw)


class AsyncioClient:
    """benchmarks/clients/udp_asyncio_client.py in `procs` processes (uvloop)."""

    name = "asyncio client"

    def __init__(self, procs: int, sockets: int, window: int, timeout_ms: int,
                 rate: Optional[float] = None) -> None:
        self.procs, self.sockets, self.window, self.timeout_ms = procs, sockets, window, timeout_ms
        self.rate = rate

    def describe(self) -> dict:
        return {"client": self.name, "processes": self.procs, "sockets_per_process":
                self.sockets, "window": self.window, "timeout_ms": self.timeout_ms,
                "event_loop": "uvloop",
                "loop": f"open, {self.rate:g} req/s" if self.rate else "closed"}

    def run(self, port: int, keys: list[str], duration_s: float, warmup_s: float,
            pin: bool) -> ClientRun:
        from clients.udp_asyncio_client import ClientConfig, run_processes
        cfg = ClientConfig(port=port, keys=keys, sockets=self.sockets, window=self.window,
                           duration_s=duration_s, warmup_s=warmup_s,
                           timeout_ms=self.timeout_ms, loop="uvloop", rate=self.rate)
        doc = run_processes(cfg, self.procs, pin=pin)
        return ClientRun(sent=doc["sent"], received=doc["received"], lost=doc["lost"],
                         rps=doc["rps"], p50_ns=doc["latency_ns"]["p50"],
                         p99_ns=doc["latency_ns"]["p99"], cpu_s=doc["cpu_s"],
                         window_ns=tuple(doc["window_ns"]), raw=doc)


def add_client_args(p: argparse.ArgumentParser) -> None:
    """The client options every load benchmark shares."""
    g = p.add_argument_group("client")
    g.add_argument("--client", choices=("auto", "loadgen", "asyncio"), default="auto",
                   help="auto: beastnet.loadgen when it is importable")
    g.add_argument("--sockets", type=int, default=64, help="loadgen: sockets")
    g.add_argument("--threads", type=int, default=2, help="loadgen: threads")
    # 64 x 8 = 512 requests in flight.  Deeper windows only add queueing
    # latency (closed loop: p50 ~ in-flight / req/s), and past ~1,000 in
    # flight the stdlib asyncio peer answers slower than the 200 ms timeout
    # and collapses (the client re-sends, the server answers stale requests):
    # its row would then measure the timeout, not the server.
    g.add_argument("--window", type=int, default=8, help="loadgen: in flight per socket")
    g.add_argument("--batch", type=int, default=32, help="loadgen: sendmmsg batch")
    g.add_argument("--procs", type=int, default=2, help="asyncio client: processes")
    g.add_argument("--sockets-per-proc", type=int, default=16, help="asyncio client")
    g.add_argument("--window-per-socket", type=int, default=16, help="asyncio client")
    g.add_argument("--timeout-ms", type=int, default=200)
    g.add_argument("--rate", type=float, default=None,
                   help="open loop at this many req/s in total (latency at equal load); "
                        "default: closed loop (capacity)")


def make_client(args: argparse.Namespace) -> Client:
    kind = args.client
    if kind == "auto":
        try:
            import beastnet.loadgen  # noqa: F401
            kind = "loadgen" if hasattr(beastnet.loadgen, "run_udp_load") else "asyncio"
        except ImportError:
            kind = "asyncio"
    if kind == "loadgen":
        return LoadgenClient(args.sockets, args.threads, args.window, args.batch,
                             args.timeout_ms, args.rate)
    return AsyncioClient(args.procs, args.sockets_per_proc, args.window_per_socket,
                         args.timeout_ms, args.rate)


# -- server CPU ------------------------------------------------------------------

class CpuSampler:
    """Samples a process's cumulative CPU every `interval_s` on a thread, so the
    CPU over any window (the client's, known only afterwards) is read off by
    linear interpolation.  Error: one clock tick (10 ms at USER_HZ=100) per
    window edge; the schedstat column is ns-exact for live threads."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[int, float, int]] = []    # (monotonic ns, cpu s, sched ns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sample()

    def _sample(self) -> None:
        try:
            self.samples.append((time.monotonic_ns(), proc_cpu_s(self.pid),
                                 proc_sched_ns(self.pid)))
        except (FileNotFoundError, ProcessLookupError):
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _at(self, t_ns: int, col: int) -> float:
        s = self.samples
        if t_ns <= s[0][0]:
            return s[0][col]
        for (ta, *a), (tb, *b) in zip(s, s[1:]):
            if ta <= t_ns <= tb:
                frac = (t_ns - ta) / (tb - ta) if tb > ta else 0.0
                return a[col - 1] + frac * (b[col - 1] - a[col - 1])
        return s[-1][col]

    def between(self, t0_ns: int, t1_ns: int) -> tuple[float, float]:
        """(utime+stime seconds, schedstat seconds) spent in [t0, t1]."""
        return (self._at(t1_ns, 1) - self._at(t0_ns, 1),
                (self._at(t1_ns, 2) - self._at(t0_ns, 2)) / 1e9)


# -- one measurement ---------------------------------------------------------------

def measure(row: Row, client: Client, keys: list[str], duration_s: float,
            warmup_s: float) -> dict:
    server = start_server(row.key, list(row.argv))
    stats: Optional[dict] = None
    try:
        expected = asset_table()[keys[0]]
        got = udp_probe(server.port, b"@probe " + keys[0].encode() + b"\n")
        if got != b"@probe " + expected:
            raise RuntimeError(f"{row.key}: wrong answer to the probe: {got[:80]!r}")
        with CpuSampler(server.pid) as sampler:
            run = client.run(server.port, keys, duration_s, warmup_s, row.pin_client)
    finally:
        stats = server.stop()
    window_s = (run.window_ns[1] - run.window_ns[0]) / 1e9
    cpu_s, sched_s = sampler.between(*run.window_ns)
    answered = max(run.received, 1)
    out = {
        "row": row.key,
        "label": row.label,
        "server_cmd": shlex.join(row.argv),
        "rps": run.rps,
        "sent": run.sent,
        "received": run.received,
        "lost": run.lost,
        "loss_pct": 100.0 * run.lost / run.sent if run.sent else 0.0,
        "p50_ms": run.p50_ns / 1e6,
        "p99_ms": run.p99_ns / 1e6,
        "window_s": window_s,
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_req": cpu_s / answered * 1e6,
        "server_sched_cpu_s": sched_s,
        "server_sched_us_per_req": sched_s / answered * 1e6,
        "server_cpu_util": cpu_s / window_s if window_s else 0.0,
        "client_cpu_s": run.cpu_s,
        "client_cpu_us_per_req": run.cpu_s / answered * 1e6,
        "client_raw": run.raw,
    }
    if stats is not None:
        totals = stats.get("totals")
        if totals:                      # beastnet: what the readers saw
            out["server_avg_batch_fill"] = stats.get("avg_batch_fill")
            out["server_kernel_drops"] = totals.get("kernel_drops")
            out["server_send_errors"] = totals.get("send_errors")
            out["server_steering"] = stats.get("steering", {}).get("enabled")
        out["server_stats"] = {k: v for k, v in stats.items() if k != "per_socket"}
    return out


# -- report -------------------------------------------------------------------------

def median_run(runs: list[dict]) -> dict:
    """The run with the median req/s (a real run, so its columns agree)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["runs"] = len(runs)
    best["rps_min"] = ordered[0]["rps"]
    best["rps_max"] = ordered[-1]["rps"]
    best["cpu_us_per_req_all"] = [r["server_cpu_us_per_req"] for r in runs]
    return best


def ratios(rows: dict[str, dict], base_key: str) -> dict[str, dict]:
    base = rows.get(base_key)
    if base is None:
        return {}
    out = {}
    for key, r in rows.items():
        out[key] = {
            "rps": r["rps"] / base["rps"] if base["rps"] else float("nan"),
            "server_cpu_per_req": r["server_cpu_us_per_req"] / base["server_cpu_us_per_req"]
            if base["server_cpu_us_per_req"] else float("nan"),
            "p50": r["p50_ms"] / base["p50_ms"] if base["p50_ms"] else float("nan"),
            "p99": r["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan"),
        }
    return out


def targets(rows: dict[str, dict], open_loop: bool) -> dict[str, dict]:
    """The issue's targets, checked for every beastnet row.  Open loop: every
    row answers the same rate, so only CPU and latency are compared."""
    a, u = rows.get("asyncio"), rows.get("uvloop")
    out = {}
    for key, r in rows.items():
        if not key.startswith("bn") or a is None or u is None:
            continue
        checks = {
            ">= 10x asyncio req/s": r["rps"] >= 10 * a["rps"],
            ">= 2x uvloop req/s": r["rps"] >= 2 * u["rps"],
            "<= 0.5x uvloop server CPU/req":
                r["server_cpu_us_per_req"] <= 0.5 * u["server_cpu_us_per_req"],
            "p50 < uvloop p50": r["p50_ms"] < u["p50_ms"],
            "p99 < uvloop p99": r["p99_ms"] < u["p99_ms"],
        }
        if open_loop:
            checks = {k: v for k, v in checks.items() if "req/s" not in k}
        out[key] = checks
    return out


def markdown(rows: dict[str, dict], rel_a: dict, rel_u: dict, checks: dict) -> str:
    lines = [
        "| server | req/s (min-max) | p50 ms | p99 ms | loss % | server CPU µs/req "
        "| server CPU util | client CPU µs/req | vs asyncio req/s | vs uvloop req/s "
        "| vs uvloop CPU/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, r in rows.items():
        ra, ru = rel_a.get(key, {}), rel_u.get(key, {})
        spread = f" ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})" if r["runs"] > 1 else ""
        lines.append(
            f"| {r['label']} | {r['rps']:,.0f}{spread} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['loss_pct']:.2f} | {r['server_cpu_us_per_req']:.2f} "
            f"| {r['server_cpu_util']:.2f} | {r['client_cpu_us_per_req']:.2f} "
            f"| {ra.get('rps', float('nan')):.2f}x | {ru.get('rps', float('nan')):.2f}x "
            f"| {ru.get('server_cpu_per_req', float('nan')):.2f}x |")
    overloaded = [r["label"] for r in rows.values() if r["loss_pct"] > 1.0]
    if overloaded:
        lines += ["", f"WARNING: more than 1 % loss in {', '.join(overloaded)}: the client "
                  "timed requests out, so req/s there measures the timeout as much as the "
                  "server. Lower --window (or raise --timeout-ms) and run again."]
    if checks:
        lines += ["", "| target | " + " | ".join(rows[k]["label"] for k in checks) + " |",
                  "| --- |" + " :---: |" * len(checks)]
        names = next(iter(checks.values())).keys()
        for name in names:
            lines.append(f"| {name} | " + " | ".join(
                "pass" if checks[k][name] else "**FAIL**" for k in checks) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="asyncio,uvloop,bn1,bn2,bn2s",
                   help=f"comma-separated, from {','.join(ROWS)}")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="excluded seconds per run")
    p.add_argument("--repeat", type=int, default=1, help="round-robin passes over the rows")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between runs")
    add_client_args(p)
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "udp_compare.json"),
                   help="where to write the JSON results")
    args = p.parse_args(argv)

    selected = [ROWS[k] for k in args.rows.split(",")]
    client = make_client(args)
    keys = asset_names()
    machine = machine_info()
    print(f"# udp_compare: {client.name}, {args.duration:g} s measured + {args.warmup:g} s "
          f"warm-up, {args.repeat} pass(es); {machine['nproc']} CPUs, {machine['cpu_model']}, "
          f"kernel {machine['kernel']}, load {' '.join(map(str, machine['loadavg_at_start']))}",
          file=sys.stderr)
    runs: dict[str, list[dict]] = {r.key: [] for r in selected}
    for n in range(args.repeat):
        for row in selected:
            r = measure(row, client, keys, args.duration, args.warmup)
            runs[row.key].append(r)
            print(f"  pass {n + 1} {row.key:8s} {r['rps']:>11,.0f} req/s  p50 {r['p50_ms']:.3f} "
                  f"ms  p99 {r['p99_ms']:.3f} ms  server {r['server_cpu_us_per_req']:.2f} "
                  f"µs/req ({r['server_cpu_util']:.2f} CPU)  loss {r['loss_pct']:.2f} %",
                  file=sys.stderr)
            time.sleep(args.pause)

    rows = {k: median_run(v) for k, v in runs.items()}
    rel_a, rel_u = ratios(rows, "asyncio"), ratios(rows, "uvloop")
    checks = targets(rows, args.rate is not None)
    print(markdown(rows, rel_a, rel_u, checks))

    doc = {
        "benchmark": "udp_compare",
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "machine": machine,
        "client": client.describe(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "cpu_source": f"/proc/<pid>/stat utime+stime, {CLOCK_TICKS_PER_S} ticks/s; "
                      "schedstat ns as cross-check",
        "rows": rows,
        "runs": runs,
        "ratios_vs_asyncio": rel_a,
        "ratios_vs_uvloop": rel_u,
        "targets": checks,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                 default=str))
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""WebSocket fan-out: beastnet's native feed vs websockets, picows, aiohttp and
uWebSockets (socketify), side by side in one run.

    python benchmarks/bench_ws.py --quick          # ~3 minutes: 1,000 connections, 3 s runs
    python benchmarks/bench_ws.py                  # full: 1,000 and 10,000 connections, 10 s runs

Workload: each server (its own process, `peers/ws_*.py`) holds the same 150-symbol
feed and publishes a ~90-byte JSON body for every symbol per round, 10 rounds/s
or back to back (`max`), the publish time inside the body.  `clients/ws_fanout_client.c`
(built here with the system C compiler; several processes) holds C connections each
subscribed to S symbols and counts what arrives.
Per server: delivered messages/s, server CPU per delivered message and delivered
messages per server CPU-second (on-CPU ns of the server process's threads from
/proc/<pid>/task/*/schedstat over the client's window; utime+stime from
/proc/<pid>/stat kept as a cross-check), publish-to-receive p50/p99, gaps (rounds a
connection never saw: conflated or dropped), RSS.  Then: 10,000 idle subscribed
connections, RSS above the idle server; and UDP and HTTP request/response
throughput (`beastnet load`) on one beastnet process without and with 10,000
streams open.
Limits: client and servers share the machine's cores, so with the publisher at
`max` (or 10,000 x 150 at 10/s) the delivered rate is bounded by whichever side
runs out of CPU first; CPU per delivered message is the comparable figure.
Latency is CLOCK_MONOTONIC at the publisher's round start to CLOCK_MONOTONIC after
the client's read() returned (one clock, shared by all processes; the client's
scheduling delay is in it for every server alike).  Loopback only.
Exit status: 0 when the run completed (targets missed included), 2 on bad
arguments or when the feed client cannot be built.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (BENCH_DIR, CLOCK_TICKS_PER_S, REPO_DIR, ServerProcess,  # noqa: E402
                     child_env, machine_info, proc_sched_ns, proc_status_kb,
                     start_server)
from udp_compare import CpuSampler  # noqa: E402

import orjson  # noqa: E402

CLIENT_SRC = BENCH_DIR / "clients" / "ws_fanout_client.c"
PEERS = BENCH_DIR / "peers"
UNIVERSE = 150                       # symbols in the feed (peers/ws_feed.py)
PUBLISHER_THREAD = "bench-publisher"  # the OS name peers/ws_feed.py gives a publisher thread


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    script: str
    module: str                      # what the server's Python must import


ROWS = {
    "beastnet": Row("beastnet", "beastnet (native fan-out, 2 workers)", "ws_beastnet.py", "beastnet"),
    "websockets": Row("websockets", "websockets + broadcast()", "ws_websockets.py", "websockets"),
    "picows": Row("picows", "picows (send per subscriber)", "ws_picows.py", "picows"),
    "aiohttp": Row("aiohttp", "aiohttp (send_frame per subscriber)", "ws_aiohttp.py", "aiohttp"),
    "socketify": Row("socketify", "uWebSockets via socketify (C++ pub/sub)", "ws_socketify.py",
                     "socketify"),
}


# -- setup ---------------------------------------------------------------------------

def build_client(out_dir: Path) -> Path:
    """Compile the feed client once (rebuilt when the source is newer)."""
    exe = out_dir / "ws_fanout_client"
    if exe.exists() and exe.stat().st_mtime >= CLIENT_SRC.stat().st_mtime:
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("bench_ws: no C compiler (cc/gcc) to build the feed client")
    out_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(CLIENT_SRC), "-lz"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"bench_ws: building the feed client failed:\n{r.stderr.strip()}")
    return exe


_python_for: dict[str, Optional[str]] = {}


def python_for(module: str, candidates: list[str]) -> Optional[str]:
    """The first interpreter among `candidates` that imports `module`."""
    if module not in _python_for:
        _python_for[module] = None
        for py in candidates:
            try:
                ok = subprocess.run([py, "-c", f"import {module}"], env=child_env(),
                                    capture_output=True, timeout=60).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                _python_for[module] = py
                break
    return _python_for[module]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the clients -----------------------------------------------------------------------

class Clients:
    """`procs` feed-client processes sharing `conns` connections.  They connect
    and subscribe, report ready, then count over a window the harness sends to
    all of them at once."""

    def __init__(self, exe: Path, port: int, conns: int, symbols: int, procs: int,
                 sources: int, connect_timeout_s: float,
                 client_args: Optional[list[str]] = None) -> None:
        self.conns = conns
        self.procs: list[subprocess.Popen] = []
        self.ready = 0
        per, extra = divmod(conns, procs)
        offset = 0
        for i in range(procs):
            n = per + (1 if i < extra else 0)
            if n == 0:
                continue
            argv = [str(exe), "--port", str(port), "--conns", str(n), "--conn-offset", str(offset),
                    "--symbols", str(symbols), "--universe", str(UNIVERSE),
                    "--sources", str(sources), "--connect-timeout-s", str(connect_timeout_s),
                    *(client_args or [])]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True,
                                               start_new_session=True))
            offset += n
        self.deadline = time.monotonic() + connect_timeout_s + 5

    def wait_ready(self) -> int:
        """Connections subscribed, once every process said ready (bounded)."""
        total = 0
        for p in self.procs:
            line = self._readline(p, self.deadline)
            if line.startswith("ready "):
                total += int(line.split()[1])
        self.ready = total
        return total

    def start_window(self, warmup_s: float, duration_s: float) -> tuple[int, int]:
        t0 = time.monotonic_ns() + int(warmup_s * 1e9)
        t1 = t0 + int(duration_s * 1e9)
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write(f"{t0} {t1}\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        return t0, t1

    def collect(self, t1_ns: int) -> dict:
        """Merge the processes' JSON: sums, the latency histogram, client CPU."""
        deadline = time.monotonic() + max(0.0, (t1_ns - time.monotonic_ns()) / 1e9) + 15
        merged: dict[str, Any] = {"procs": len(self.procs), "client_cpu_s": 0.0}
        hist: dict[int, int] = {}
        for p in self.procs:
            line = self._readline(p, deadline)
            doc = orjson.loads(line) if line.startswith("{") else {}
            for k, v in doc.items():
                if k == "hist":
                    for floor, count in v:
                        hist[floor] = hist.get(floor, 0) + count
                elif isinstance(v, int):
                    merged[k] = merged.get(k, 0) + v
            merged["client_cpu_s"] += self._reap(p)
        merged["hist"] = sorted(hist.items())
        return merged

    def close(self) -> None:
        """End every client now (EOF on stdin ends it; SIGKILL if it hangs)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.close()
                except OSError:
                    pass
        for p in self.procs:
            self._reap(p)

    @staticmethod
    def _readline(p: subprocess.Popen, deadline: float) -> str:
        import select
        assert p.stdout is not None
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.2)
            if r:
                return p.stdout.readline().strip()
            if p.poll() is not None:
                return ""
        return ""

    @staticmethod
    def _reap(p: subprocess.Popen) -> float:
        """Wait for a client (SIGKILL its group after 5 s) and return its CPU seconds."""
        if p.returncode is not None:
            return 0.0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return ru.ru_utime + ru.ru_stime
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)     # its own session: only what we started
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        return ru.ru_utime + ru.ru_stime


def hist_percentile(hist: list[tuple[int, int]], q: float) -> float:
    """The floor (ns) of the bucket holding the q-th percentile (<= 1.6 % low)."""
    total = sum(c for _, c in hist)
    if not total:
        return float("nan")
    rank = q / 100.0 * total
    seen = 0
    for floor, count in hist:
        seen += count
        if seen >= rank:
            return float(floor)
    return float(hist[-1][0])


class RSSGuard:
    """Kills a server whose RSS passes `limit_mb` (a Python peer buffering a
    backlog it cannot send grows without bound) and records the peak."""

    def __init__(self, server: ServerProcess, limit_mb: float) -> None:
        self.server, self.limit_kb = server, limit_mb * 1024
        self.peak_kb = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RSSGuard":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                rss = proc_status_kb(self.server.pid, "VmRSS")
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            self.peak_kb = max(self.peak_kb, rss)
            if rss > self.limit_kb:
                self.killed = True
                os.killpg(self.server.pid, signal.SIGKILL)
                return


# -- one fan-out measurement --------------------------------------------------------------

def thread_sched_ns(pid: int, comm: str) -> Optional[int]:
    """On-CPU ns of the threads of `pid` named `comm`; None when none is."""
    total, found = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            found = True
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total if found else None


def sleep_until_ns(t_ns: int) -> None:
    time.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))


def start_row(row: Row, python: str, rate: str, extra: Optional[list[str]] = None) -> ServerProcess:
    """A feed server whose publisher waits for `go()` (SIGUSR1)."""
    argv = [python, str(PEERS / row.script), "--rate", rate, "--wait-go"] + (extra or [])
    return start_server(row.key, argv, timeout_s=30)


def fanout(row: Row, python: str, exe: Path, conns: int, symbols: int, rate: str,
           args: argparse.Namespace, server_args: Optional[list[str]] = None,
           client_args: Optional[list[str]] = None) -> dict:
    server = start_row(row, python, rate, server_args)
    stats: Optional[dict] = None
    clients = None
    try:
        with RSSGuard(server, args.max_server_rss_mb) as guard:
            clients = Clients(exe, server.port, conns, symbols, args.client_procs,
                              args.sources, args.connect_timeout, client_args)
            ready = clients.wait_ready()
            os.kill(server.pid, signal.SIGUSR1)          # publish from now on
            with CpuSampler(server.pid) as sampler:
                t0, t1 = clients.start_window(args.warmup, args.duration)
                # A publisher on its own thread (beastnet's) is measured apart,
                # so the engine's own cost per message can be told from it.
                sleep_until_ns(t0)
                pub0 = thread_sched_ns(server.pid, PUBLISHER_THREAD)
                sleep_until_ns(t1)
                pub1 = thread_sched_ns(server.pid, PUBLISHER_THREAD)
                try:
                    rss_kb = proc_status_kb(server.pid, "VmRSS")
                except (FileNotFoundError, ProcessLookupError):
                    rss_kb = 0
                got = clients.collect(t1)
    finally:
        if clients is not None:
            clients.close()
        stats = server.stop()
    window_s = (t1 - t0) / 1e9
    cpu_s, sched_s = sampler.between(t0, t1)
    bodies = got.get("bodies", 0)
    gaps = got.get("gaps", 0)
    pub_s = (pub1 - pub0) / 1e9 if pub0 is not None and pub1 is not None else None
    out = {
        "server": row.key, "label": row.label, "conns": conns, "symbols": symbols,
        "rate": rate, "ready": ready, "window_s": window_s,
        "delivered": bodies,
        "msgs_per_s": bodies / window_s,
        "offered_per_s": conns * symbols * float(rate) if rate != "max" else None,
        # schedstat (ns) is the figure: at 10 rounds/s a short run costs the
        # server a few clock ticks, too coarse for /proc/<pid>/stat's 10 ms.
        "server_cpu_s": sched_s, "server_stat_cpu_s": cpu_s,
        "server_cpu_util": sched_s / window_s,
        "server_cpu_us_per_msg": sched_s / bodies * 1e6 if bodies else float("nan"),
        "msgs_per_server_cpu_s": bodies / sched_s if sched_s > 0 else float("nan"),
        "publisher_thread_cpu_s": pub_s,
        "engine_cpu_us_per_msg": (sched_s - pub_s) / bodies * 1e6
        if pub_s is not None and bodies else None,
        "publisher_rounds_per_s": (stats or {}).get("rounds_per_s"),
        "p50_ms": hist_percentile(got["hist"], 50) / 1e6,
        "p99_ms": hist_percentile(got["hist"], 99) / 1e6,
        "gaps": gaps, "gap_pct": 100.0 * gaps / (bodies + gaps) if bodies + gaps else 0.0,
        "stale": got.get("stale", 0),
        "closed_by_server": got.get("closed", 0), "failed": got.get("failed", 0),
        "client_cpu_s": got["client_cpu_s"],
        "server_rss_mb": rss_kb / 1024, "server_peak_rss_mb": guard.peak_kb / 1024,
        "killed_over_rss": guard.killed,
        "client": {k: v for k, v in got.items() if k != "hist"},
        "latency_hist_ns": got["hist"],
        "server_stats": stats,
    }
    return out


# -- idle memory ------------------------------------------------------------------------------

def memory(row: Row, python: str, exe: Path, conns: int, symbols: int,
           args: argparse.Namespace) -> dict:
    server = start_row(row, python, "0")
    clients = None
    try:
        time.sleep(1.0)
        idle_kb = proc_status_kb(server.pid, "VmRSS")
        clients = Clients(exe, server.port, conns, symbols, args.client_procs, args.sources,
                          args.connect_timeout)
        ready = clients.wait_ready()
        time.sleep(args.settle / 2)
        # What holding the idle connections costs in CPU (timers, scans), over
        # the second half of the settle time.
        c0, w0 = proc_sched_ns(server.pid), time.monotonic_ns()
        time.sleep(args.settle / 2)
        idle_cpu = (proc_sched_ns(server.pid) - c0) / max(time.monotonic_ns() - w0, 1)
        held_kb = proc_status_kb(server.pid, "VmRSS")
        hwm_kb = proc_status_kb(server.pid, "VmHWM")
    finally:
        if clients is not None:
            clients.close()
        server.stop()
    return {
        "server": row.key, "label": row.label, "conns": conns, "symbols": symbols,
        "ready": ready, "idle_rss_mb": idle_kb / 1024, "rss_mb": held_kb / 1024,
        "peak_rss_mb": hwm_kb / 1024, "above_idle_mb": (held_kb - idle_kb) / 1024,
        "kib_per_conn": (held_kb - idle_kb) / max(ready, 1),
        "cpu_util_holding": idle_cpu,
    }


# -- request/response beside the streams ---------------------------------------------------

def beastnet_load(target: str, keys: str, duration_s: float, warmup_s: float,
                  extra: list[str], tmp: Path) -> dict:
    """One `beastnet load` run; its JSON's result block (rps, latency)."""
    out = tmp / "load.json"
    argv = [sys.executable, "-m", "beastnet", "load", target, "-k", keys, "-d", str(duration_s),
            "--warmup", str(warmup_s), "-q", "--json", str(out)] + extra
    r = subprocess.run(argv, env=child_env(), capture_output=True, text=True,
                       timeout=duration_s + warmup_s + 60)
    if r.returncode not in (0, 1) or not out.exists():
        return {"error": (r.stderr or r.stdout).strip()[-300:], "rps": float("nan"),
                "p50_ms": float("nan"), "p99_ms": float("nan")}
    res = orjson.loads(out.read_bytes())["result"]
    lat = res.get("latency_ns", {})
    return {"rps": res["rps"], "p50_ms": lat.get("p50", float("nan")) / 1e6,
            "p99_ms": lat.get("p99", float("nan")) / 1e6, "loss_rate": res.get("loss_rate"),
            "client_cpu_us_per_req": res.get("cpu_per_request_us")}


def rr_with_streams(exe: Path, conns: int, symbols: int, args: argparse.Namespace) -> dict:
    """UDP and HTTP request/response on one beastnet process (feed + UDP on the
    same table): first with no stream open, then with `conns` subscribed."""
    import tempfile
    row = ROWS["beastnet"]
    server = start_row(row, sys.executable, args.rr_stream_rate, ["--udp"])
    assert server.proc.stdout is not None
    # Printed right after the HTTP port (or EOF if the server died): a plain
    # readline, as select() cannot see what the text wrapper already buffered.
    udp_line = server.proc.stdout.readline().strip()
    udp_port = int(udp_line.split()[1]) if udp_line.startswith("udp ") else 0
    keys = ",".join(f"S{i:03d}" for i in range(UNIVERSE))
    clients = None
    out: dict[str, Any] = {"conns": conns, "symbols": symbols,
                           "stream_rate": args.rr_stream_rate}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def both(tag: str) -> None:
                out[f"udp_{tag}"] = beastnet_load(f"127.0.0.1:{udp_port}", keys, args.rr_duration,
                                                  1.0, [], Path(tmp))
                out[f"http_{tag}"] = beastnet_load(f"http://127.0.0.1:{server.port}/v1/", keys,
                                                   args.rr_duration, 1.0, ["-c", "64"], Path(tmp))
            # without, with, without again: the ratio is against the mean of the
            # two runs around it, so a drift of the machine's load cancels out.
            both("before")
            clients = Clients(exe, server.port, conns, symbols, args.client_procs, args.sources,
                              args.connect_timeout)
            out["ready"] = clients.wait_ready()
            os.kill(server.pid, signal.SIGUSR1)
            out["rss_with_streams_mb"] = proc_status_kb(server.pid, "VmRSS") / 1024
            both("with")
            clients.close()
            clients = None
            time.sleep(0.5)
            both("after")
    finally:
        if clients is not None:
            clients.close()
        out["server_stats"] = server.stop()
    for proto in ("udp", "http"):
        a = (out[f"{proto}_before"]["rps"] + out[f"{proto}_after"]["rps"]) / 2
        b = out[f"{proto}_with"]["rps"]
        out[f"{proto}_without"] = {"rps": a, "p99_ms": (out[f"{proto}_before"]["p99_ms"]
                                                        + out[f"{proto}_after"]["p99_ms"]) / 2}
        out[f"{proto}_ratio"] = b / a if a == a and a else float("nan")
    return out


# -- report ------------------------------------------------------------------------------------

def median_run(runs: list[dict]) -> dict:
    """The run with the median msgs per server CPU-second (a real run, so its
    columns agree)."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_server_cpu_s"]
                     if r["msgs_per_server_cpu_s"] == r["msgs_per_server_cpu_s"] else 0)
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["runs"] = len(runs)
    best["msgs_per_server_cpu_s_all"] = [r["msgs_per_server_cpu_s"] for r in runs]
    return best


TARGETS = (("websockets", 10.0), ("picows", 3.0), ("socketify", 1.0))


def fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else spec.format(v)


def fanout_table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| workload | server | ready | publisher rounds/s | delivered msg/s | server CPU "
             "µs/msg | (without the publisher thread) | msgs per server CPU-s | beastnet ÷ this "
             "| p50 ms | p99 ms | gaps % | server RSS MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for wl, rows in results.items():
        bn = rows.get("beastnet", {}).get("msgs_per_server_cpu_s", float("nan"))
        for key, r in rows.items():
            note = " (killed: RSS limit)" if r["killed_over_rss"] else ""
            ratio = bn / r["msgs_per_server_cpu_s"] if r["msgs_per_server_cpu_s"] else float("nan")
            lines.append(
                f"| {wl} | {r['label']}{note} | {r['ready']:,} "
                f"| {fmt(r['publisher_rounds_per_s'], '{:,.0f}')} | {r['msgs_per_s']:,.0f} "
                f"| {r['server_cpu_us_per_msg']:.3f} | {fmt(r['engine_cpu_us_per_msg'], '{:.3f}')} "
                f"| {r['msgs_per_server_cpu_s']:,.0f} "
                f"| {ratio:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['gap_pct']:.1f} "
                f"| {r['server_rss_mb']:.1f} |")
    short = [f"{wl}: {r['label']} ({r['ready']:,} of {r['conns']:,})"
             for wl, rows in results.items() for r in rows.values() if r["ready"] < r["conns"]]
    if short:
        lines += ["", "WARNING: not every connection subscribed within --connect-timeout, so "
                  "these rows served fewer clients: " + "; ".join(short)]
    return "\n".join(lines)


def check_targets(results: dict[str, dict[str, dict]], mem: dict[str, dict],
                  rr: Optional[dict]) -> list[tuple[str, str, Optional[bool]]]:
    out: list[tuple[str, str, Optional[bool]]] = []
    for wl, rows in results.items():
        bn = rows.get("beastnet")
        for peer, factor in TARGETS:
            if bn is None or peer not in rows:
                continue
            ratio = bn["msgs_per_server_cpu_s"] / rows[peer]["msgs_per_server_cpu_s"]
            out.append((f"{wl}: msgs per server CPU-s >= {factor:g}x {peer}",
                        f"{ratio:.2f}x", ratio >= factor))
    if "beastnet" in mem:
        m = mem["beastnet"]
        scaled = m["above_idle_mb"] * 10_000 / max(m["ready"], 1)
        out.append((f"{m['conns']:,} idle subscribed connections < 40 MB above idle",
                    f"{m['above_idle_mb']:.1f} MB ({m['kib_per_conn']:.2f} KiB/conn; "
                    f"{scaled:.1f} MB per 10,000)", scaled < 40))
    if rr:
        for proto in ("udp", "http"):
            ratio = rr[f"{proto}_ratio"]
            out.append((f"{proto.upper()} req/s with {rr['conns']:,} streams within 5 %",
                        f"{ratio:.3f}", ratio >= 0.95 if ratio == ratio else None))
    return out


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1,000 connections (10 and 150 symbols at 10/s, 10 at max), 3 s runs, "
                        "memory for beastnet and websockets only")
    p.add_argument("--servers", default=",".join(ROWS), help=f"from {','.join(ROWS)}")
    p.add_argument("--conns", help="comma-separated connection counts (default 1000,10000)")
    p.add_argument("--symbols", help="comma-separated symbols per connection (default 10,150)")
    p.add_argument("--rates", help="comma-separated publisher rounds/s or max (default 10,max)")
    p.add_argument("--duration", type=float, help="measured seconds (10; quick 3)")
    p.add_argument("--warmup", type=float, help="seconds after all connected, excluded (2; quick 1)")
    p.add_argument("--repeat", type=int, default=1, help="round-robin passes, median run shown")
    p.add_argument("--client-procs", type=int, default=2, help="feed-client processes")
    p.add_argument("--sources", type=int, default=8,
                   help="client source addresses 127.0.0.2.. (ephemeral ports per address)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds for every connection to subscribe")
    p.add_argument("--peer-python", action="append", default=[],
                   help="interpreter(s) to try for the peers (first that imports the library); "
                        "this one is tried last")
    p.add_argument("--max-server-rss-mb", type=float, default=3072,
                   help="kill a server past this RSS (a peer buffering an unbounded backlog)")
    p.add_argument("--memory-conns", type=int, default=10_000)
    p.add_argument("--memory-servers", help="servers for the idle-memory run "
                                            "(default all; quick beastnet,websockets)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before reading idle RSS")
    p.add_argument("--rr-conns", type=int, default=10_000,
                   help="streams open during the request/response run (0 skips it)")
    p.add_argument("--rr-stream-rate", default="0",
                   help="publisher rounds/s while the request/response run holds its streams")
    p.add_argument("--rr-duration", type=float, help="seconds per load run (5; quick 2)")
    p.add_argument("--skip-fanout", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_ws.json"))
    args = p.parse_args(argv)
    quick = args.quick
    try:
        conns_l = [int(x) for x in (args.conns or ("1000" if quick else "1000,10000")).split(",")]
        syms_l = [int(x) for x in (args.symbols or "10,150").split(",")]
    except ValueError:
        print("bench_ws: --conns and --symbols take comma-separated integers", file=sys.stderr)
        return 2
    rates_l = (args.rates or "10,max").split(",")
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.rr_duration = args.rr_duration or (2.0 if quick else 5.0)
    workloads = [(c, s, r) for c in conns_l for s in syms_l for r in rates_l]
    if quick and not (args.conns or args.symbols or args.rates):
        workloads = [(1000, 10, "10"), (1000, 150, "10"), (1000, 10, "max")]
    problems = [f"unknown server {k!r} (from {','.join(ROWS)})"
                for k in args.servers.split(",") if k not in ROWS]
    problems += [f"symbols {s} outside 1..{UNIVERSE}" for s in syms_l if not 1 <= s <= UNIVERSE]
    problems += [f"rate {r!r} is neither 'max' nor a number > 0" for r in rates_l
                 if r != "max" and not _positive(r)]
    problems += [f"connections {c} < 1" for c in conns_l if c < 1]
    if args.client_procs < 1 or not 1 <= args.sources <= 250:
        problems.append("--client-procs must be >= 1 and --sources 1..250")
    if problems:
        print("bench_ws: " + "; ".join(problems), file=sys.stderr)
        return 2
    raise_nofile()
    exe = build_client(REPO_DIR / "reports" / "bin")
    candidates = args.peer_python + [sys.executable]
    machine = machine_info()
    print(f"# bench_ws: {machine['nproc']} CPUs, {machine['cpu_model']}, kernel "
          f"{machine['kernel']}, load {' '.join(map(str, machine['loadavg_at_start']))}; "
          f"{args.duration:g} s measured + {args.warmup:g} s warm-up per run", file=sys.stderr)

    rows: list[Row] = []
    pythons: dict[str, str] = {}
    missing: dict[str, str] = {}
    for key in args.servers.split(","):
        py = python_for(ROWS[key].module, candidates)
        if py is None:
            missing[key] = f"no interpreter among {candidates} imports {ROWS[key].module}"
            print(f"  skipping {key}: {missing[key]}", file=sys.stderr)
        else:
            rows.append(ROWS[key])
            pythons[key] = py

    results: dict[str, dict[str, dict]] = {}
    all_runs: dict[str, dict[str, list[dict]]] = {}
    if not args.skip_fanout:
        for conns, symbols, rate in workloads:
            wl = f"{conns:,} conns x {symbols} symbols @ {rate}/s"
            all_runs[wl] = {r.key: [] for r in rows}
            for n in range(args.repeat):
                for row in rows:
                    try:
                        r = fanout(row, pythons[row.key], exe, conns, symbols, rate, args)
                    except RuntimeError as e:
                        print(f"  {wl} {row.key}: {e}", file=sys.stderr)
                        continue
                    all_runs[wl][row.key].append(r)
                    print(f"  pass {n + 1} {wl:34s} {row.key:10s} ready {r['ready']:>6,} "
                          f"{r['msgs_per_s']:>12,.0f} msg/s  {r['server_cpu_us_per_msg']:7.3f} "
                          f"µs/msg  p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:8.2f} ms  gaps "
                          f"{r['gap_pct']:5.1f} %  client CPU {r['client_cpu_s']:.1f} s",
                          file=sys.stderr)
            results[wl] = {k: median_run(v) for k, v in all_runs[wl].items() if v}

    mem: dict[str, dict] = {}
    if not args.skip_memory and args.memory_conns > 0:
        keys = (args.memory_servers or ("beastnet,websockets" if quick else args.servers)).split(",")
        for key in keys:
            if key not in pythons:
                continue
            m = memory(ROWS[key], pythons[key], exe, args.memory_conns, 10, args)
            mem[key] = m
            print(f"  memory {key:10s} {m['ready']:,} conns: idle {m['idle_rss_mb']:.1f} MB, "
                  f"held {m['rss_mb']:.1f} MB, +{m['above_idle_mb']:.1f} MB "
                  f"({m['kib_per_conn']:.2f} KiB/conn)", file=sys.stderr)

    rr = None
    if args.rr_conns > 0 and "beastnet" in pythons:
        rr = rr_with_streams(exe, args.rr_conns, 10, args)
        print(f"  rr: UDP {rr['udp_without']['rps']:,.0f} -> {rr['udp_with']['rps']:,.0f} req/s, "
              f"HTTP {rr['http_without']['rps']:,.0f} -> {rr['http_with']['rps']:,.0f} req/s "
              f"with {rr.get('ready', 0):,} streams", file=sys.stderr)

    print("\n## WebSocket fan-out (median run of each row)\n")
    print("delivered msg/s: feed bodies the clients received in the window; server CPU: "
          "on-CPU time of the server process's threads (schedstat) over that window; beastnet ÷ this: ratio of "
          "msgs per server CPU-second; latency: publish (CLOCK_MONOTONIC, in the body) to the "
          "client's read(); gaps: rounds a connection never saw (conflated or dropped).\n")
    if results:
        print(fanout_table(results))
    if mem:
        print("\n| idle memory | connections | idle server MB | with connections MB | above idle MB "
              "| KiB per connection | server CPU while holding them |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for m in mem.values():
            print(f"| {m['label']} | {m['ready']:,} | {m['idle_rss_mb']:.1f} | {m['rss_mb']:.1f} "
                  f"| {m['above_idle_mb']:.1f} | {m['kib_per_conn']:.2f} "
                  f"| {100 * m['cpu_util_holding']:.1f} % |")
    if rr:
        print(f"\n| request/response, one beastnet process, req/s (p99 ms) | without streams, "
              f"before | with {rr.get('ready', 0):,} streams (publisher {rr['stream_rate']}/s) "
              "| without, after | with ÷ mean(without) |\n| --- | ---: | ---: | ---: | ---: |")
        for proto in ("udp", "http"):
            a, b, c = rr[f"{proto}_before"], rr[f"{proto}_with"], rr[f"{proto}_after"]
            print(f"| {proto.upper()} | {a['rps']:,.0f} ({a['p99_ms']:.2f}) "
                  f"| {b['rps']:,.0f} ({b['p99_ms']:.2f}) | {c['rps']:,.0f} ({c['p99_ms']:.2f}) "
                  f"| {rr[f'{proto}_ratio']:.3f} |")
    checks = check_targets(results, mem, rr)
    if checks:
        print("\n| target | measured | |\n| --- | --- | :---: |")
        for name, value, ok in checks:
            print(f"| {name} | {value} | {'pass' if ok else ('n/a' if ok is None else '**FAIL**')} |")
    if missing:
        print("\nnot run: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))

    doc = {
        "benchmark": "bench_ws",
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "machine": machine,
        "pythons": pythons,
        "missing": missing,
        "duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat,
        "client": {"exe": str(exe), "procs": args.client_procs, "sources": args.sources},
        "cpu_source": "/proc/<pid>/task/*/schedstat ns of the server process; /proc/<pid>/stat "
                      f"utime+stime ({CLOCK_TICKS_PER_S} ticks/s) as server_stat_cpu_s",
        "latency_clock": "CLOCK_MONOTONIC: publisher round start -> client read() return",
        "fanout": results, "fanout_runs": all_runs, "memory": mem, "request_response": rr,
        "targets": [{"target": n, "measured": v, "pass": ok} for n, v, ok in checks],
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

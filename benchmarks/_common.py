"""Shared pieces of the beastnet benchmarks: the "same table", process control,
CPU accounting from /proc, and the machine description.

Every server in a comparison serves the table `asset_table()` builds, so the
bytes on the wire are identical whichever server answers.
"""
from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SRC_DIR = REPO_DIR / "src"

# /proc/<pid>/stat reports utime/stime in clock ticks: USER_HZ, 100 on every
# mainstream Linux, i.e. a 10 ms granularity.  Over a 5 s window at ~1 s of
# server CPU that is a +-1 % error; run longer for finer figures.
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# Real tickers first, then deterministic synthetic ones up to the count asked.
_TICKERS = (
    "BTC ETH USDT BNB SOL XRP USDC ADA AVAX DOGE TRX DOT LINK MATIC TON SHIB LTC BCH ICP UNI "
    "ATOM XLM ETC OKB FIL HBAR APT LDO ARB VET NEAR QNT MKR CRO OP AAVE GRT ALGO STX EGLD "
    "SAND EOS XTZ THETA IMX AXS MANA SNX INJ RNDR FTM NEO KAVA FLOW CHZ XMR RUNE ZEC DASH CAKE"
).split()


def asset_names(n: int = 150) -> list[str]:
    """`n` distinct asset keys, the same on every call and every machine."""
    names = list(_TICKERS[:n])
    i = 0
    while len(names) < n:
        digest = hashlib.sha256(f"asset-{i}".encode()).hexdigest().upper()
        name = "".join(c for c in digest if c.isalpha())[:3] + str(i)
        if name not in names:
            names.append(name)
        i += 1
    return names


def asset_body(name: str, body_bytes: Optional[int] = None) -> bytes:
    """A deterministic ~110-byte JSON quote for `name`; padded (in the "src"
    field) to exactly `body_bytes` when given."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    doc = {
        "asset": name,
        "price": round(1 + (h % 10_000_000) / 97.0, 6),
        "change_24h": round(((h >> 24) % 2000 - 1000) / 100.0, 2),
        "vol_24h": (h >> 12) % 10_000_000,
        "ts": 1_700_000_000_000 + (h >> 40) % 86_400_000,
        "src": "aggregate",
    }
    body = orjson.dumps(doc)
    if body_bytes is not None:
        pad = body_bytes - len(body)
        if pad < 0:
            raise ValueError(f"body for {name} is {len(body)} bytes > {body_bytes}")
        doc["src"] = "aggregate" + "." * pad
        body = orjson.dumps(doc)
        assert len(body) == body_bytes
    return body


def asset_table(n: int = 150, body_bytes: Optional[int] = None) -> dict[str, bytes]:
    """The "same table": key -> pre-serialized JSON body, for every server."""
    return {name: asset_body(name, body_bytes) for name in asset_names(n)}


# -- CPU accounting -------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    """utime + stime of every thread of `pid` (live and exited), in seconds.

    Read from /proc rather than getrusage(RUSAGE_CHILDREN), which only covers
    children that have been waited for: here the server is still running when
    the window closes.  Resolution: one clock tick (see CLOCK_TICKS_PER_S).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces; fields after ')' are fixed.
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])     # fields 14 and 15 of stat(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def proc_sched_ns(pid: int) -> int:
    """On-CPU nanoseconds summed over the live threads of `pid`, from
    /proc/<pid>/task/*/schedstat.  Nanosecond resolution, a cross-check of the
    tick-based figure; it misses threads that exited, none do mid-run here."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


# -- server processes -----------------------------------------------------------

def child_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: the worktree's src first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC_DIR), str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class ServerProcess:
    """A benchmark server in its own process group.  The first stdout line it
    prints is its bound port; on SIGTERM it may print one JSON line of counters."""

    name: str
    proc: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 5.0) -> Optional[dict]:
        """SIGTERM the server (by PID), wait, SIGKILL its group if it hangs.
        Returns the counters it printed on the way out, if any."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Its own group (start_new_session), so this reaches only what we started.
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate(timeout=timeout_s)
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                try:
                    return orjson.loads(line)
                except orjson.JSONDecodeError:
                    break
        return None


def start_server(name: str, argv: list[str], timeout_s: float = 15.0) -> ServerProcess:
    """Start `argv` in a new session (so it can be killed as a group, never by
    name) and wait for the port it prints first."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None, text=True,
                            env=child_env(), start_new_session=True)
    deadline = time.monotonic() + timeout_s
    line = ""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    try:
        port = int(line.strip())
    except ValueError:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        raise RuntimeError(f"{name}: no port on stdout (got {line!r}, exit {proc.returncode})")
    return ServerProcess(name, proc, port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_probe(port: int, request: bytes, host: str = "127.0.0.1", timeout_s: float = 2.0) -> bytes:
    """One request/response round trip, to check a server answers before load."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(request, (host, port))
        return s.recv(65536)


# -- machine description --------------------------------------------------------

def machine_info() -> dict:
    """What a figure was measured on: the load generator's description plus the
    clock-tick rate the /proc CPU figures are counted in."""
    from beastnet.loadgen import machine_info as describe
    info = describe()
    info["clock_ticks_per_s"] = CLOCK_TICKS_PER_S
    info["loadavg_at_start"] = info.get("loadavg")
    info["nproc"] = info.get("cpus")
    return info


def percentile_ns(samples, q: float) -> float:
    """Percentile of a sequence of latencies in ns (numpy, linear interpolation)."""
    import numpy as np
    arr = np.asarray(samples)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


# -- benchmark-only C (the io_uring floors) ------------------------------------

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


def build_uring_c(source: Path, exe: Path) -> Path:
    """Compile a benchmark's C file that links liburing; exits with one line
    (not a traceback) when the compiler or liburing-dev is missing or the
    build fails."""
    import shutil
    cc = shutil.which("cc")
    if cc is None:
        sys.exit("a C compiler (cc) is needed (scripts/system-deps installs it)")
    probe = subprocess.run(["pkg-config", "--exists", "liburing"], capture_output=True) \
        if shutil.which("pkg-config") else None
    if (probe is None or probe.returncode != 0) and not Path("/usr/include/liburing.h").exists():
        sys.exit("liburing is needed for the io_uring floor (apt-get install liburing-dev; "
                 "scripts/system-deps installs it)")
    done = subprocess.run([cc, *C_FLAGS, "-o", str(exe), str(source), "-luring"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        sys.exit(f"building {source.name} failed: {first}")
    return exe


# -- paired ratios (interleaved A/B rounds on a shared machine) ------------------

def paired_ratios(a_runs: list, b_runs: list, comparable: float = 2.0) -> dict:
    """Round-by-round ratios a/b of req per CPU-second and of req/s, over the
    rounds where both ran (None = no figure).  "comparable" keeps only the
    rounds whose two req/s are within a factor `comparable` of each other: CPU
    per request depends on how many requests a wake-up finds, so a run a busy
    neighbour starved (a few hundred req/s) is not compared with one that was
    not."""
    both = [(x, y) for x, y in zip(a_runs, b_runs) if x and y and x["rps"] > 0 and y["rps"] > 0]
    near = [(x, y) for x, y in both if 1 / comparable <= x["rps"] / y["rps"] <= comparable]
    return {"per_cpu_s": [x["per_cpu_s"] / y["per_cpu_s"] for x, y in both],
            "rps": [x["rps"] / y["rps"] for x, y in both],
            "per_cpu_s_comparable": [x["per_cpu_s"] / y["per_cpu_s"] for x, y in near]}


def spread(values: list) -> str:
    """median (min-max, n) of a list of ratios."""
    import statistics
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"

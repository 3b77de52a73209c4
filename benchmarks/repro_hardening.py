"""Reproductions of issue 23 ("Hardening, second round"): the figures its
"How we check" asks for, one case per defect, each on loopback with the
server and the hostile peers started here and stopped by PID.

    python benchmarks/repro_hardening.py [--python PY] [--label L] CASE [flags]

CASE is one of webhook, ws-nonreaders, slow-readers, half-frames,
redis-stall, reload-fifo, or all.  `--python` is the interpreter of the
beastnet under test (default: this one), so a checkout built in another venv
is measured by the same script (`beastnet` is taken from the same bin/).
The peers (receivers, clients, the load generator) always run from this
interpreter, so only the server differs between two runs.

What each case measures (the quantity of the issue's closing note):
  webhook        server VmRSS at start and VmHWM while --receivers HTTPS
                 receivers answer every delivery 200 with a --body-mb MB body
                 (streamed: the receiver never holds it)
  ws-nonreaders  --subscribers WebSocket clients of `beastnet serve`'s
                 /v1/stream, every asset, SO_RCVBUF 4 KiB, never reading: the
                 server's kernel send queues (tx_queue, i.e. SIOCOUTQ, of
                 every socket on its port, /proc/net/tcp) and the host's TCP
                 memory (/proc/net/sockstat), peak; when they are closed; what
                 stays queued after the close (FIN-WAIT-1)
  slow-readers   --readers clients of one --body-mib MiB entry (HTTPServer,
                 plain and TLS), SO_RCVBUF 16 KiB, each reading --rate-kib
                 KiB/s: the server's kernel send queues, peak
  half-frames    --connections WebSocket clients of an echo path (HTTPServer),
                 each one whole fragmented 64 KiB message, then 65,535 of a
                 65,536-byte frame: server VmRSS/VmHWM, connections still open
                 (--waves N: again once they are closed, a leak vs reuse)
  redis-stall    `beastnet serve --redis` with a pro key loaded at 75 % of its
                 limit (beastnet load, open loop) while redis-server sleeps 3 s
                 (DEBUG SLEEP): requests admitted (200) of those sent
  reload-fifo    `beastnet serve` with TLS; its key path replaced by a FIFO and
                 SIGHUP: whether /healthz answers, whether the price served
                 moves and its stale flag, whether SIGTERM is obeyed

Limits: RSS is the whole server process; kernel queues are the server's side
only (the clients' small receive buffers keep theirs small); the machine is
shared, so compare rows of one run (same session, interleaved).  This is a
benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

MIB = 1 << 20
STARTED: list[subprocess.Popen] = []      # every process this script started, stopped by PID


# -- processes ---------------------------------------------------------------------------

def start(cmd: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, **kw)
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> Optional[int]:
    """SIGTERM, then SIGKILL after `grace_s`; the exit status, or None when
    SIGTERM was not obeyed."""
    obeyed = True
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            obeyed = False
            proc.kill()
            proc.wait(10)
    if proc in STARTED:
        STARTED.remove(proc)
    return proc.returncode if obeyed else None


def stop_all() -> None:
    for proc in list(STARTED):
        stop(proc, 3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def port_sockets(port: int) -> list[tuple[str, int]]:
    """(state, tx_queue) of every socket whose local port is `port`, the
    listening ones aside.  tx_queue is what SIOCOUTQ gives: bytes unsent plus
    unacknowledged.  State 01 ESTABLISHED, 04 FIN-WAIT-1, 07 CLOSE."""
    seen = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            next(table)
            for line in table:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] != "0A":
                    # Keyed by address pair: the file is read in pages, not as one
                    # snapshot, and a socket can show twice while the table changes.
                    seen[(f[1], f[2])] = (f[3], int(f[4].split(":")[0], 16))
    return list(seen.values())


def wait_until(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def fifo_waiters(pid: int) -> int:
    """Threads of `pid` blocked opening a FIFO no one has open on the other side."""
    n = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/wchan") as wchan:
                n += wchan.read().strip() == "wait_for_partner"
        except OSError:
            pass
    return n


def tcp_mem_mib() -> float:
    """Host TCP memory (/proc/net/sockstat "mem", in pages)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    return 0.0


def make_cert(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    ctx = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


class Serve:
    """`beastnet serve` of the checkout under test, in a temp dir."""

    def __init__(self, args: argparse.Namespace, tmp: Path, *extra: str) -> None:
        self.http, self.admin, self.udp = free_port(), free_port(), free_port()
        self.log = tmp / "serve.log"
        cmd = [args.beastnet, "serve", "--feed", "sim", "--http-port", str(self.http),
               "--admin-port", str(self.admin), "--udp-port", str(self.udp), "--sockets", "1",
               "--http-threads", "1", "--log-level", "warning", *extra]
        self.proc = start(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{self.admin}/healthz", 1.0)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"beastnet serve did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid


ENGINE = r"""
import sys
from beastnet import HTTPServer, ResponseTable, TLSConfig, WebSocketOptions
kind, mib, conns, cert, key = sys.argv[1:6]
mib, conns = int(mib), int(conns)
table = ResponseTable({"BIG": b"x" * (mib << 20)})
kw = dict(threads=1, max_connections=conns + 100, backlog=4096)
if cert:
    kw["tls"] = TLSConfig(cert_file=cert, key_file=key)
if kind == "ws":
    kw["websocket"] = WebSocketOptions(echo_path="/echo")
with HTTPServer(table, **kw) as srv:
    print(srv.address[1], flush=True)
    sys.stdin.read()
"""


def engine(args: argparse.Namespace, kind: str, mib: int, conns: int,
           cert: str = "", key: str = "") -> tuple[subprocess.Popen, int]:
    """A library HTTPServer (1 worker) of the checkout under test."""
    proc = start([args.python, "-c", ENGINE, kind, str(mib), str(conns), cert, key],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the engine did not start")
    return proc, int(line)


# -- WebSocket client pieces -------------------------------------------------------------

TEXT, BINARY, CONT = 0x1, 0x2, 0x0


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    # A zero mask: masked as RFC 6455 requires, the payload unchanged.
    return head + b"\0\0\0\0" + payload


def ws_open(port: int, path: str, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(20)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
              f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    return s


def ws_upgraded(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        data += chunk
    if not data.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(data.split(b"\r\n", 1)[0].decode(errors="replace"))
    if data.index(b"\r\n\r\n") + 4 != len(data):
        raise ConnectionError("bytes after the upgrade (read them as frames)")


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


# -- cases -------------------------------------------------------------------------------

RECEIVER = r"""
import asyncio, logging, ssl, sys, time
logging.getLogger("asyncio").setLevel(logging.CRITICAL)   # writes after the pusher hung up
cert, key, n, body_mb, counter = sys.argv[1:6]
n, body_mb = int(n), int(body_mb)
written = [0]
CHUNK = b"\0" * (1 << 20)

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            total = body_mb * 1000 * 1000
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % total)
            while total > 0:                 # streamed: never held whole
                part = CHUNK[:min(total, len(CHUNK))]
                writer.write(part)
                await writer.drain()
                total -= len(part)
                written[0] += len(part)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
        pass
    finally:
        writer.close()

async def report():
    while True:
        await asyncio.sleep(0.5)
        with open(counter, "w") as f:
            f.write(str(written[0]))

async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ports = []
    for _ in range(n):
        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        ports.append(srv.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await report()

asyncio.run(main())
"""


def case_webhook(args: argparse.Namespace, tmp: Path) -> dict:
    cert, key = make_cert(tmp)
    counter = tmp / "written"
    receiver = start([sys.executable, "-c", RECEIVER, cert, key, str(args.receivers),
                      str(args.body_mb), str(counter)], stdout=subprocess.PIPE, text=True)
    ports = receiver.stdout.readline().split()
    db = str(tmp / "keys.db")
    for i, port in enumerate(ports):
        subprocess.run([args.beastnet, "webhooks", "--db", db, "--allow-private", "add",
                        "--tier", "enterprise", "--assets", "BTC",
                        f"https://127.0.0.1:{port}/hook{i}"],
                       check=True, capture_output=True, cwd=tmp)
    srv = Serve(args, tmp, "--keystore", db, "--webhooks", "--webhooks-allow-private",
                "--webhook-ca-file", cert)
    rss0 = vm_mib(srv.pid, "VmRSS")
    peak_rss = rss0
    t_end = time.monotonic() + args.seconds
    while time.monotonic() < t_end:
        peak_rss = max(peak_rss, vm_mib(srv.pid, "VmRSS"))
        time.sleep(0.2)
    hwm, rss_end = vm_mib(srv.pid, "VmHWM"), vm_mib(srv.pid, "VmRSS")
    stop(srv.proc)
    stop(receiver)
    written = int(counter.read_text()) if counter.exists() else 0
    return {"value": f"VmRSS {rss0:,.0f} MiB at start, VmHWM {hwm:,.0f} MiB, "
                     f"VmRSS {rss_end:,.0f} MiB at {args.seconds:g} s",
            "detail": f"{args.receivers} receivers x {args.body_mb} MB answers, "
                      f"{written / 1e6:,.0f} MB written by them",
            "rss_start_mib": rss0, "hwm_mib": hwm, "rss_end_mib": rss_end,
            "received_mb": written / 1e6}


def case_ws_nonreaders(args: argparse.Namespace, tmp: Path) -> dict:
    srv = Serve(args, tmp, "--no-keys")
    assets = subprocess.run([args.python, "-c", "from beastnet.serve.assets import ASSETS;"
                             "print(' '.join(ASSETS))"],
                            check=True, capture_output=True, text=True).stdout.split()
    subscribe = frame(TEXT, json.dumps({"op": "subscribe", "symbols": assets}).encode())
    mem0 = tcp_mem_mib()
    clients = []
    for _ in range(args.subscribers):
        s = ws_open(srv.http, "/v1/stream", rcvbuf=4096)
        clients.append(s)
    for s in clients:
        ws_upgraded(s)
        s.sendall(subscribe)
    t0 = time.monotonic()           # the last subscription sent: stalls start by now
    peak_q = peak_mem = 0.0
    first_close = all_closed = None
    residual = (0, 0)
    while time.monotonic() - t0 < args.seconds:
        socks = port_sockets(srv.http)
        established = sum(1 for st, _ in socks if st == "01")
        queued = sum(q for _, q in socks) / MIB
        peak_q, peak_mem = max(peak_q, queued), max(peak_mem, tcp_mem_mib() - mem0)
        now = time.monotonic() - t0
        if first_close is None and established < args.subscribers:
            first_close = now
        if all_closed is None and established == 0:
            all_closed = now
        if all_closed is not None:
            left = [q for st, q in socks if st != "01" and q]
            residual = (len(left), sum(left))
            if now - all_closed >= 3.0:     # what a 1008 close leaves in FIN-WAIT-1
                break
        time.sleep(0.25)
    for s in clients:
        s.close()
    stop(srv.proc)
    closed = (f"closed {first_close:.1f}..{all_closed:.1f} s" if all_closed is not None else
              f"{'some closed from %.1f s, ' % first_close if first_close else ''}"
              f"not all closed at {args.seconds:g} s")
    return {"value": f"send queues peak {peak_q:,.1f} MiB (TCP mem +{peak_mem:,.0f} MiB); "
                     f"{closed}; 3 s after: {residual[0]} sockets, {residual[1] / MIB:,.1f} MiB "
                     "queued",
            "detail": f"{args.subscribers} subscribers of every asset, never reading",
            "peak_queued_mib": peak_q, "peak_tcp_mem_mib": peak_mem,
            "first_close_s": first_close, "all_closed_s": all_closed,
            "residual_sockets": residual[0], "residual_mib": residual[1] / MIB}


def case_slow_readers(args: argparse.Namespace, tmp: Path) -> dict:
    cert, key = make_cert(tmp)
    out = {}
    mem0 = tcp_mem_mib()
    for mode in ("plain", "tls"):
        # The first mode's sockets may still hold memory as orphans: from the same baseline.
        wait_until(lambda: tcp_mem_mib() < mem0 + 4, 15.0)
        proc, port = engine(args, "http", args.body_mib, args.readers,
                            *((cert, key) if mode == "tls" else ()))
        ctx = ssl._create_unverified_context()
        clients = []
        for _ in range(args.readers):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.settimeout(20)
            s.connect(("127.0.0.1", port))
            if mode == "tls":
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            s.sendall(b"GET /v1/BIG HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            clients.append(s)
        tick = 0.25
        per_tick = int(args.rate_kib * 1024 * tick)
        peak_q = peak_mem = 0.0
        got = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            for s in clients:
                want = per_tick
                while want > 0:
                    try:
                        chunk = s.recv(min(want, 16384))
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    except OSError:
                        break
                    if not chunk:
                        break
                    want -= len(chunk)
                    got += len(chunk)
            peak_q = max(peak_q, sum(q for _, q in port_sockets(port)) / MIB)
            peak_mem = max(peak_mem, tcp_mem_mib() - mem0)
            time.sleep(tick)
        for s in clients:
            s.close()
        stop(proc)
        out[mode], out[mode + "_mem"] = peak_q, peak_mem
    return {"value": f"send queues peak: plain {out['plain']:,.1f} MiB, TLS {out['tls']:,.1f} MiB "
                     f"(TCP mem +{out['plain_mem']:,.0f} / +{out['tls_mem']:,.0f} MiB)",
            "detail": f"{args.readers} readers of {args.body_mib} MiB at {args.rate_kib} KiB/s, "
                      f"{args.seconds:g} s each",
            "plain_mib": out["plain"], "tls_mib": out["tls"],
            "plain_tcp_mem_mib": out["plain_mem"], "tls_tcp_mem_mib": out["tls_mem"]}


def case_half_frames(args: argparse.Namespace, tmp: Path) -> dict:
    proc, port = engine(args, "ws", 0, args.connections)
    rss0 = vm_mib(proc.pid, "VmRSS")
    whole = b"x" * 65536
    message = frame(TEXT, whole[:40000], fin=False) + frame(CONT, whole[40000:])
    partial = frame(BINARY, b"y" * 65536)[:-1]
    waves = []                      # per wave: (VmHWM, VmRSS at its end, closed by, still open)
    refused = 0                     # connections the engine closed (1013: past its reassembly cap)
    # --waves 2: the same connections again once the first are closed; whether
    # the second wave's peak adds to the first tells a leak from memory the
    # allocator keeps for reuse.
    for _ in range(args.waves):
        clients: list[socket.socket] = []
        batch = 250                 # one round trip per batch, not per connection
        for first in range(0, args.connections, batch):
            group = [ws_open(port, "/echo") for _ in range(min(batch, args.connections - first))]
            for s in group:
                ws_upgraded(s)
                s.sendall(message)
            for s in group:
                # Past the engine's reassembly cap a message or half-frame is
                # refused with a close (1013): counted, the connection dropped.
                try:
                    if recv_exact(s, 2)[0] & 0x0F == 0x8:
                        raise ConnectionError("closed by the server")
                    recv_exact(s, 8 + 65536)        # the rest of the echo (8-byte length head)
                    s.sendall(partial)
                except OSError:
                    refused += 1
            clients.extend(group)
        t0 = time.monotonic()       # the last partial frame sent
        all_closed = None
        open_now = len(clients)
        while time.monotonic() - t0 < args.seconds:
            open_now = sum(1 for st, _ in port_sockets(port) if st == "01")
            if open_now == 0:
                all_closed = time.monotonic() - t0
                break
            time.sleep(0.5)
        if all_closed is not None:
            time.sleep(2.0)         # what the closes give back, not the moment they happen
        waves.append((vm_mib(proc.pid, "VmHWM"), vm_mib(proc.pid, "VmRSS"), all_closed,
                      open_now if all_closed is None else 0))
        for s in clients:
            s.close()
        if all_closed is None:
            break
    stop(proc)
    parts = []
    for i, (hwm, rss_end, all_closed, open_now) in enumerate(waves):
        closed = (f"all closed by {all_closed:.1f} s, VmRSS {rss_end:,.0f} MiB 2 s later"
                  if all_closed is not None else
                  f"{open_now:,} of {args.connections:,} still open at {args.seconds:g} s, "
                  f"VmRSS {rss_end:,.0f} MiB")
        parts.append(f"{'wave %d: ' % (i + 1) if args.waves > 1 else ''}"
                     f"VmHWM {hwm:,.0f} MiB, {closed}")
    hwm, rss_end, all_closed, open_now = waves[-1]
    if refused:
        parts.append(f"{refused:,} refused by the reassembly cap")
    return {"value": f"VmRSS {rss0:,.0f} MiB at start; " + "; ".join(parts),
            "detail": f"{args.connections:,} connections, one 64 KiB fragmented message then "
                      "65,535 of 65,536 bytes of a frame",
            "rss_start_mib": rss0, "hwm_mib": hwm, "rss_end_mib": rss_end,
            "open_at_end": open_now, "all_closed_s": all_closed, "refused": refused,
            "waves": [list(w) for w in waves]}


def case_redis_stall(args: argparse.Namespace, tmp: Path) -> dict:
    rport = free_port()
    redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--enable-debug-command", "local"],
                  cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = ["redis-cli", "-p", str(rport)]
    deadline = time.monotonic() + 10
    while subprocess.run(cli + ["PING"], capture_output=True, text=True).stdout.strip() != "PONG":
        if time.monotonic() > deadline:
            raise SystemExit("redis-server did not start")
        time.sleep(0.1)
    db = str(tmp / "keys.db")
    api_key = "pro-key-repro-0123456789"
    subprocess.run([args.beastnet, "keys", "--db", db, "add", "--tier", "pro", "--key", api_key],
                   check=True, capture_output=True, cwd=tmp)
    srv = Serve(args, tmp, "--keystore", db, "--redis", f"redis://127.0.0.1:{rport}")
    rate = args.limit_qps * 0.75
    report = tmp / "load.json"
    # The load generator is this interpreter's beastnet in both runs: only the server differs.
    load_cmd = [str(Path(sys.executable).parent / "beastnet"), "load",
                f"http://127.0.0.1:{srv.http}", "-k", "BTC", "--api-key", api_key,
                "--rate", f"{rate:g}", "-d", f"{args.window_s:g}", "--warmup", "1",
                "-c", "8", "-t", "1", "--timeout-ms", "5000", "--json", str(report), "-q"]
    load = start(load_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0 + args.stall_at_s)     # warm-up (leases granted), then into the measured window
    # --stall-s 0: the same run without the stall, the control row.
    sleep = subprocess.run(cli + (["DEBUG", "SLEEP", f"{args.stall_s:g}"] if args.stall_s
                                  else ["PING"]),
                           capture_output=True, text=True, timeout=args.stall_s + 10)
    _, err = load.communicate(timeout=args.window_s + 30)
    STARTED.remove(load)
    stop(srv.proc)
    stop(redis)
    if sleep.stdout.strip() not in ("OK", "PONG"):
        raise SystemExit(f"DEBUG SLEEP failed: {sleep.stdout} {sleep.stderr}")
    doc = json.loads(report.read_text())
    codes = find_status_codes(doc)
    ok = int(codes.get("200", 0))
    refused = int(codes.get("429", 0))
    total = sum(int(v) for v in codes.values())
    return {"value": f"admitted {ok:,} of {total:,} (429: {refused:,})",
            "detail": f"pro key at {rate:g} req/s ({args.limit_qps:g} limit), {args.window_s:g} s "
                      "window, " + (f"DEBUG SLEEP {args.stall_s:g} from {args.stall_at_s:g} s"
                                   if args.stall_s else "no stall (the control row)"),
            "admitted": ok, "total": total, "refused": refused, "status_codes": codes}


def find_status_codes(doc) -> dict:
    """`status_codes` of the load report, wherever it sits."""
    if isinstance(doc, dict):
        if isinstance(doc.get("status_codes"), dict):
            return doc["status_codes"]
        for v in doc.values():
            found = find_status_codes(v)
            if found:
                return found
    elif isinstance(doc, list):
        for v in doc:
            found = find_status_codes(v)
            if found:
                return found
    return {}


def case_reload_fifo(args: argparse.Namespace, tmp: Path) -> dict:
    cert, key = make_cert(tmp)
    srv = Serve(args, tmp, "--no-keys", "--tls-cert", cert, "--tls-key", key)
    price_url = f"https://127.0.0.1:{srv.http}/v1/BTC"
    health_url = f"http://127.0.0.1:{srv.admin}/healthz"

    def price() -> tuple[object, object]:
        status, body = http_get(price_url)
        if status != 200:
            return None, None
        doc = json.loads(body)
        return (doc.get("price"), doc.get("ts")), doc.get("stale")

    before_price, _ = price()
    os.rename(key, key + ".orig")
    os.mkfifo(key)                  # an open() for reading blocks until a writer comes
    # One writer that comes and goes (as `cat key.pem > key` would) lets a
    # reader's first open() through with EOF; an open() after it blocks for
    # good.  A server thread blocked in a FIFO's open() shows wchan
    # wait_for_partner.  When the writer's close comes late (a busy machine),
    # the second open() gets it too and the reload just fails: SIGHUP again.
    writers, blocked = 0, False
    for _ in range(5):
        srv.proc.send_signal(signal.SIGHUP)
        if not wait_until(lambda: fifo_waiters(srv.pid) > 0, 1.0):
            break                   # the path was refused without a blocking open()
        os.close(os.open(key, os.O_WRONLY | os.O_NONBLOCK))
        writers += 1
        if wait_until(lambda: fifo_waiters(srv.pid) > 0, 1.0):
            blocked = True
            break
    writer_opened = writers > 0
    answered, asked, prices, stale_flags = 0, 0, set(), set()
    t_end = time.monotonic() + args.watch_s
    while time.monotonic() < t_end:
        status, _ = http_get(health_url, 1.0)
        asked += 1
        answered += status == 200
        p, stale = price()
        if p is not None:
            prices.add(p)
            stale_flags.add(stale)
        time.sleep(0.5)
    t = time.monotonic()
    code = stop(srv.proc, 5.0)
    term = (f"SIGTERM obeyed in {time.monotonic() - t:.1f} s (exit {code})" if code is not None
            else "SIGTERM ignored for 5 s (killed)")
    log = srv.log.read_text()
    reload_lines = []
    for line in log.splitlines():
        if "reload" in line.lower():
            try:
                reload_lines.append(json.loads(line).get("msg", line).replace(key, "KEY"))
            except ValueError:
                reload_lines.append(line)
    os.unlink(key)
    moved = "moved" if len(prices) > 1 else "frozen"
    return {"value": f"/healthz 200 to {answered} of {asked}; price {moved} "
                     f"({len(prices)} distinct), stale {sorted(map(str, stale_flags))}; {term}",
            "detail": (f"SIGHUP's open() of the key {'blocked' if blocked else 'never blocked'}"
                       f" ({writers} writer(s) let through); "
                       "reload log: " + (reload_lines[-1][:140] if reload_lines else "(none)")),
            "open_blocked": blocked, "writers": writers, "healthz_ok": answered,
            "healthz_asked": asked,
            "distinct_prices": len(prices),
            "stale_flags": sorted(map(str, stale_flags)), "sigterm_exit": code,
            "had_price_before": before_price is not None}


CASES: dict[str, Callable[[argparse.Namespace, Path], dict]] = {
    "webhook": case_webhook,
    "ws-nonreaders": case_ws_nonreaders,
    "slow-readers": case_slow_readers,
    "half-frames": case_half_frames,
    "redis-stall": case_redis_stall,
    "reload-fifo": case_reload_fifo,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("case", choices=[*CASES, "all"])
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the beastnet under test (its bin/ has `beastnet`)")
    ap.add_argument("--label", default="", help="a name for this run's rows (e.g. before, after)")
    ap.add_argument("--json", metavar="FILE", help="append each row as a JSON line to FILE")
    ap.add_argument("--receivers", type=int, default=4)
    ap.add_argument("--body-mb", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="how long a case watches (default per case: webhook 15, "
                         "ws-nonreaders 40, slow-readers 8, half-frames 25)")
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--readers", type=int, default=200)
    ap.add_argument("--body-mib", type=int, default=16)
    ap.add_argument("--rate-kib", type=int, default=16)
    ap.add_argument("--connections", type=int, default=8000)
    ap.add_argument("--waves", type=int, default=1,
                    help="half-frames: the connections again once the first are closed")
    ap.add_argument("--limit-qps", type=float, default=2000.0,
                    help="the pro tier's limit in the server under test")
    ap.add_argument("--window-s", type=float, default=5.0)
    ap.add_argument("--stall-at-s", type=float, default=0.5)
    ap.add_argument("--stall-s", type=float, default=3.0)
    ap.add_argument("--watch-s", type=float, default=5.0)
    args = ap.parse_args()
    args.beastnet = str(Path(args.python).parent / "beastnet")
    if not os.access(args.beastnet, os.X_OK):
        ap.error(f"no beastnet executable next to {args.python}")
    default_s = {"webhook": 15.0, "ws-nonreaders": 40.0, "slow-readers": 8.0,
                 "half-frames": 25.0}
    names = list(CASES) if args.case == "all" else [args.case]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    status = 0
    try:
        for name in names:
            case_args = argparse.Namespace(**vars(args))
            case_args.seconds = args.seconds or default_s.get(name, 0.0)
            with tempfile.TemporaryDirectory(prefix=f"repro-{name}-") as tmp:
                t0 = time.time()
                load0 = os.getloadavg()[0]
                try:
                    row = CASES[name](case_args, Path(tmp))
                except (SystemExit, OSError, subprocess.SubprocessError, ValueError) as exc:
                    row = {"value": f"failed: {exc}", "detail": ""}
                    status = 1
                finally:
                    stop_all()
                row.update(case=name, label=args.label, python=args.python,
                           utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
                           load=f"{load0:.1f}->{os.getloadavg()[0]:.1f}")
                print(f"| {args.label} | {name} | {row['value']} | {row['detail']} | "
                      f"{row['utc']} UTC, load {row['load']} |", flush=True)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(row) + "\n")
    except KeyboardInterrupt:
        status = 130
    finally:
        stop_all()
    return status


if __name__ == "__main__":
    sys.exit(main())

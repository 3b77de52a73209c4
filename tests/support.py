"""Helpers shared by the test modules: a small UDP client, a pure-Python
reference of the request grammar (docs/protocol.md), the fixed error bodies and
polling with a deadline."""
from __future__ import annotations

import asyncio
import glob
import os
import random
import re
import shutil
import socket
import threading
import time
from typing import Any, Callable, Optional, TypeVar

import pytest
from hypothesis import strategies as st

BAD_REQUEST = b'{"error":"bad_request"}'
NOT_FOUND = b'{"error":"not_found"}'
BUSY = b'{"error":"busy"}'
INTERNAL_ERROR = b'{"error":"internal_error"}'
UNAUTHORIZED = b'{"error":"unauthorized"}'
TOO_LARGE = b'{"error":"too_large"}'
ERROR_BODIES = (BAD_REQUEST, NOT_FOUND, BUSY, INTERNAL_ERROR)
UDP_PAYLOAD_MAX = 65507                     # IPv4; IPv6 carries 65,527

KEY_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-"
KEY_RE = re.compile(rb"\A[A-Za-z0-9._:/-]{1,64}\Z")
PRINTABLE = bytes(range(0x21, 0x7F))        # printable, not space

T = TypeVar("T")


# -- reference parser -----------------------------------------------------------

def reference_parse(datagram: bytes) -> tuple[str, bytes, Optional[bytes], Optional[bytes]]:
    """The grammar of docs/protocol.md written plainly, independent of the C parser.

    Returns (status, tag_prefix, key, apikey) like beastnet._core.parse_request:
    status "ok", "bad" or "empty"; tag_prefix is "@TAG " when the tag parsed
    (also on a bad request whose error lies after the tag), else b"".
    """
    data = datagram
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        return ("empty", b"", None, None)
    tag = b""
    rest = data
    if data.startswith(b"@"):
        # The tag runs up to the first non-printable byte, which must be a
        # space; "@" alone, 17+ bytes or no space after it are bad.
        run = re.match(rb"@([\x21-\x7e]*)", data).group(1)  # type: ignore[union-attr]
        if not run or len(run) > 16 or len(data) <= 1 + len(run) or data[1 + len(run)] != 0x20:
            return ("bad", b"", None, None)
        tag = data[: len(run) + 2]
        rest = data[len(run) + 2:]
    parts = rest.split(b" ", 1)
    key = parts[0]
    if not KEY_RE.match(key):
        return ("bad", tag, None, None)
    if len(parts) == 1:
        return ("ok", tag, key, None)
    apikey = parts[1]
    if not re.match(rb"\A[\x21-\x7e]{1,64}\Z", apikey):
        return ("bad", tag, None, None)
    return ("ok", tag, key, apikey)


def expected_reply(datagram: bytes, lookup: Callable[[bytes], Optional[bytes]],
                   max_datagram: int = 512, miss_body: bytes = NOT_FOUND,
                   api_keys: Optional[set[bytes]] = None, silent: Optional[bool] = None,
                   payload_max: int = UDP_PAYLOAD_MAX) -> Optional[bytes]:
    """The exact reply a server with table lookup `lookup` owes `datagram`
    (response-rate limiting off), or None where it owes none.

    `api_keys`: the keys the server enforces (None: not enforced).  `silent`:
    whether unauthorized and malformed requests go unanswered; as on the
    server, it defaults to on when keys are enforced.  `payload_max`: the UDP
    payload limit towards the client (65,507 for IPv4, 65,527 for IPv6)."""
    if silent is None:
        silent = api_keys is not None
    if len(datagram) > max_datagram:
        return None if silent else BAD_REQUEST      # MSG_TRUNC: not parsed, no tag echoed
    status, tag, key, apikey = reference_parse(datagram)
    if status != "ok":
        return None if silent else tag + BAD_REQUEST
    assert key is not None
    if api_keys is not None and apikey not in api_keys:
        return None if silent else tag + UNAUTHORIZED
    body = lookup(key)
    if body is not None and len(tag) + len(body) > payload_max:
        return tag + TOO_LARGE
    return tag + (body if body is not None else miss_body)


# -- hypothesis strategies ------------------------------------------------------

# Datagrams built from grammar pieces, so valid and near-valid requests are common.
_tag = st.binary(min_size=0, max_size=18).map(lambda b: bytes(PRINTABLE[x % len(PRINTABLE)] for x in b))
# keys the test tables hold (k, k0..k9, BTC-USD) or random ones
_key = (st.sampled_from([b"k", b"k0", b"k1", b"k5", b"k9", b"BTC-USD"])
        | st.binary(min_size=0, max_size=66).map(
            lambda b: bytes(KEY_CHARS[x % len(KEY_CHARS)] for x in b)))
_apikey = st.binary(min_size=0, max_size=66).map(lambda b: bytes(PRINTABLE[x % len(PRINTABLE)] for x in b))
_noise = st.binary(max_size=3)
GRAMMARISH = st.builds(
    lambda use_tag, tag, sep1, key, use_api, sep2, api, end, noise, pos: _splice(
        (b"@" + tag + sep1 if use_tag else b"") + key + (sep2 + api if use_api else b"") + end,
        noise, pos),
    st.booleans(), _tag, st.sampled_from([b" ", b"", b"  ", b"\t"]), _key, st.booleans(),
    st.sampled_from([b" ", b"", b"  "]), _apikey,
    st.sampled_from([b"", b"\n", b"\r\n", b"\r", b" ", b"\n\n"]), _noise, st.integers(0, 200))


def _splice(data: bytes, noise: bytes, pos: int) -> bytes:
    pos = pos % (len(data) + 1)
    return data[:pos] + noise + data[pos:] if pos % 3 == 0 else data


# -- client -----------------------------------------------------------------------

class UDPClient:
    """A connected UDP socket with timeouts: only the server's replies reach it."""

    def __init__(self, address: tuple, timeout: float = 2.0) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.settimeout(timeout)
        self.sock.connect(address[:2])
        self.timeout = timeout

    def send(self, payload: bytes) -> None:
        self.sock.send(payload)

    def recv(self, timeout: Optional[float] = None) -> bytes:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return self.sock.recv(70000)
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)

    def request(self, payload: bytes, timeout: Optional[float] = None) -> bytes:
        """Send one datagram and return the next reply."""
        self.send(payload)
        return self.recv(timeout)

    def recv_many(self, n: int, timeout: Optional[float] = None) -> list[bytes]:
        """Exactly `n` replies, each within `timeout` of the previous one."""
        return [self.recv(timeout) for _ in range(n)]

    def expect_silence(self, wait: float = 0.2) -> Optional[bytes]:
        """None if nothing arrives within `wait` seconds, else the stray datagram."""
        try:
            return self.recv(wait)
        except socket.timeout:
            return None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "UDPClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- real parts ---------------------------------------------------------------------

# The programs the tests drive, by the name a missing one is reported under,
# with the executables that may stand for it.  Debian keeps nginx in /usr/sbin
# (not on a non-root PATH) and PostgreSQL's server programs in
# /usr/lib/postgresql/<version>/bin (never on PATH).
REAL_PARTS: dict[str, tuple[str, ...]] = {
    "redis-server": ("redis-server",),
    "openssl": ("openssl",),
    "nginx": ("nginx",),
    "curl": ("curl",),
    "wrk": ("wrk",),
    "chromium": ("chromium", "chromium-browser", "google-chrome"),
    "initdb": ("initdb",),
    "pg_ctl": ("pg_ctl",),
    "sqlite3": ("sqlite3",),                    # the shell: the key store's documented backup
    "systemd-analyze": ("systemd-analyze",),    # verifies examples/beastnet.service
}
_EXTRA_DIRS = ["/usr/sbin", "/usr/local/sbin"]


def find_tool(name: str) -> Optional[str]:
    """The path of real part `name` (a key of REAL_PARTS) on PATH or where
    Debian installs it off PATH, else None."""
    extra = os.pathsep.join(_EXTRA_DIRS + sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                 reverse=True))
    for exe in REAL_PARTS[name]:
        path = shutil.which(exe) or shutil.which(exe, path=extra)
        if path:
            return path
    return None


def require(name: str) -> str:
    """The path of real part `name`.  Missing, the test skips on a developer's
    machine, and fails with one line naming it under CI (`CI` set, as
    .ci/run sets it, which installs every real part): a real part is never
    mocked, and a CI run that skipped it would pass without testing it."""
    path = find_tool(name)
    if path is not None:
        return path
    what = f"{name} is not installed (.ci/run installs it with scripts/system-deps)"
    if os.environ.get("CI"):
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


def requires(*names: str) -> pytest.MarkDecorator:
    """Mark: the test calls require(name) for each of `names` before it runs
    (conftest's pytest_runtest_setup)."""
    unknown = [n for n in names if n not in REAL_PARTS]
    if unknown:
        raise ValueError(f"unknown real part(s) {unknown}: add them to REAL_PARTS")
    return pytest.mark.requires(*names)


# -- polling and introspection ------------------------------------------------------

# A port a test picks, closes and then hands to a server it starts (or
# leaves closed, to be refused) comes from a band below the kernel's
# ephemeral range, of this process's own: bind(0) and connect() elsewhere
# never hand one of these out, and under pytest-xdist each worker
# (PYTEST_XDIST_WORKER=gw0, gw1...) has its own band, so two workers never
# pick the same port between the check and the use.  A random start in the
# band keeps two sessions on one machine (two checkouts' runs) apart too.
_PORT_BAND = 1500
_PORT_BANDS = 9                           # serial + up to 8 workers
_next_port: Optional[int] = None


def _port_band() -> Optional[tuple[int, int]]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    base = ephemeral_low - _PORT_BANDS * _PORT_BAND
    if base < 10000:                       # a tuned range leaves no room: bind(0) it is
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker[:2] == "gw" and worker[2:].isdigit() else 0
    low = base + (index % _PORT_BANDS) * _PORT_BAND
    return low, low + _PORT_BAND


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free on `host` now (IPv4 or IPv6 loopback; TCP, or UDP with
    kind=SOCK_DGRAM), from this process's band (above)."""
    global _next_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    band = _port_band()
    if band is None:
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    low, high = band
    if _next_port is None or not low <= _next_port < high:
        _next_port = low + random.randrange(_PORT_BAND)
    for _ in range(_PORT_BAND):
        port = _next_port
        _next_port = low + (port + 1 - low) % _PORT_BAND
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue                    # taken, or in TIME_WAIT: the next one
            return port
    raise AssertionError(f"no free port in {low}-{high - 1} on {host}")


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.005,
             message: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def open_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:                 # the fd listdir itself used
            pass
    return out


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def native_thread_count() -> int:
    """Threads of this process as the kernel sees them (includes native readers)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/self/status")


def counter_invariants(totals: dict) -> list[str]:
    """Relations between a server's summed counters that must always hold once
    the server is quiet (no datagram between recvmmsg and the counter update).
    Returns the violated ones, described."""
    t = totals
    problems = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    refused = t["unauthorized"] + t["rate_limited"] + t["over_quota"]      # API keys enforced
    check(t["rx_packets"] == t["hits"] + t["misses"] + t["bad_requests"] + refused,
          "rx_packets == hits + misses + bad_requests + key refusals")
    check(t["misses"] == t["not_found"] + t["queued"] + t["queue_drops"],
          "misses == not_found + queued + queue_drops")
    native_replies = t["hits"] + t["not_found"] + t["queue_drops"] + t["bad_requests"] + refused
    # Replies withheld on purpose: silent refusals and response-rate limiting.
    check(t["tx_packets"] + t["send_errors"] + t["unanswered"] + t["rrl_dropped"] == native_replies,
          "tx_packets + send_errors + unanswered + rrl_dropped"
          " == hits + not_found + queue_drops + bad_requests + key refusals")
    check(t["too_large"] <= t["hits"] or "handler_calls" in t, "too_large <= hits")
    check(t["truncated"] + t["empty"] <= t["bad_requests"], "truncated + empty <= bad_requests")
    check(t["send_enobufs"] <= t["send_errors"], "send_enobufs <= send_errors")
    check(t["rx_batches"] <= t["rx_packets"], "rx_batches <= rx_packets")
    check(t["tx_batches"] <= t["tx_packets"], "tx_batches <= tx_packets")
    if "handler_calls" in t:
        # every queued miss was popped and handed to the handler exactly once
        check(t["handler_calls"] == t["queued"], "handler_calls == queued")
        check(t["miss_replies"] + t["miss_send_errors"] + t["handler_inflight"]
              == t["handler_calls"], "miss_replies + miss_send_errors + inflight == handler_calls")
        check(t["handler_errors"] <= t["handler_calls"], "handler_errors <= handler_calls")
    return problems


def settled_stats(server, sent: int, timeout: float = 5.0) -> dict:
    """Wait until the server has accounted for `sent` datagrams (received or
    dropped by the kernel), every queued miss is answered, and the counters are
    at rest; return stats().

    A reader bumps its counters one by one after it has sent the batch's
    replies, so a client can hold a reply before the counters show it, and one
    snapshot may catch a batch half-counted: wait for a snapshot that satisfies
    the invariants and equals the next one."""
    def ready():
        s = server.stats()
        t = s["totals"]
        if t["rx_packets"] + t["kernel_drops"] < sent:
            return None
        if "handler_calls" in t and (t["handler_calls"] < t["queued"] or t["handler_inflight"]
                                     or t["miss_replies"] + t["miss_send_errors"]
                                     < t["handler_calls"]):
            return None
        if counter_invariants(t):
            return None
        again = server.stats()
        return s if again["totals"] == t else None
    return wait_for(ready, timeout, message=f"server to account for {sent} datagrams")


async def until(predicate: Callable[[], Any], timeout_s: float = 10.0) -> bool:
    """On an event loop: wait until `predicate()` holds (polled every 5 ms),
    for state a component updates itself; False at the deadline, so the
    test's own assert says what was missing."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


#: Native threads that live as long as the process and are no Python thread
#: (libuv's worker pool, started by conftest's warm-up): set there, once.
PERMANENT_NATIVE_THREADS = 0


def quiet_native_thread_count(timeout: float = 2.0) -> int:
    """The native thread count once no thread is half-gone: a thread joined
    from Python may linger in /proc for a moment, so wait until every native
    thread is a live Python thread (readers are native-only) or one of the
    process's permanent native threads."""
    wait_for(lambda: native_thread_count() == threading.active_count() + PERMANENT_NATIVE_THREADS,
             timeout, message="exiting native threads to leave")
    return native_thread_count()


# -- rate limits --------------------------------------------------------------------

def gcra_bounds(qps: float, burst: int, stamps: list[tuple[float, float]]) -> tuple[float, float]:
    """(least, most) requests one GCRA limit of `qps` and `burst` admits from
    back-to-back requests whose (send, reply) times are `stamps`: burst +
    qps x elapsed, +-1.  The server saw request i somewhere in stamps[i], so
    the longest possible span gives the most and the shortest the least.  A
    pause longer than the tolerance (burst - 1) / qps between two requests
    wastes credit (the bucket was full); the least subtracts that, so a
    stalled client or reader cannot fail the check."""
    outer = stamps[-1][1] - stamps[0][0]
    inner = max(0.0, stamps[-1][0] - stamps[0][1])
    tolerance = (burst - 1) / qps
    wasted = sum(max(0.0, b[1] - a[0] - tolerance) for a, b in zip(stamps, stamps[1:]))
    return burst + qps * (inner - wasted) - 1, burst + qps * outer + 1


def run_side_by_side(loads: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Start every load in its own thread at once, wait for all of them, and
    return their results by name (a load that raised is re-raised here)."""
    results: dict[str, T] = {}
    errors: list[BaseException] = []

    def run(name: str, load: Callable[[], T]) -> None:
        try:
            results[name] = load()
        except BaseException as exc:     # re-raised in the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=item) for item in loads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def governed_table_and_keys(public_key: str, partner_key: str) -> tuple[Any, Any]:
    """The governor tests' table (one hit, "HIT") and keys: a public key, and
    a partner key the governor sheds last."""
    from beastnet import APIKeyTable, ResponseTable
    keys = APIKeyTable()
    keys.set(public_key)
    keys.set(partner_key, shed_last=True)
    table = ResponseTable()
    table["HIT"] = b'{"hit":true}'
    return table, keys


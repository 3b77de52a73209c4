"""The webhook delivery engine: every subscription gets its assets' current
bodies from the response table once per interval of its tier.

* **Schedule.**  A subscription fires at `phase + k * interval` on the wall
  clock (UTC seconds), `phase` a stable hash of its id within the interval:
  intervals never drift (a late cycle does not push the next one back) and
  10,000 subscriptions spread over the interval instead of firing together.
  A cycle more than one interval late is skipped and counted, as is every
  grid point a stall jumped over.
* **UDP.**  Every UDP subscription due in a tick goes to one
  `UDPPusher.push()` call: one datagram per asset, sent natively in
  `sendmmsg` batches, fire-and-forget.
* **HTTPS.**  One POST per subscription per cycle, the JSON array of its
  bodies, signed as Standard Webhooks says; aiohttp with one keep-alive pool
  per endpoint; a timeout per attempt; retries with exponential backoff and
  full jitter; `Retry-After` honoured on 429 and 503; 410 disables the
  subscription; redirects are failures and never followed; only 2xx counts.
  A subscription whose previous delivery is still retrying skips the cycle.
* **SSRF.**  Addresses are checked after every DNS resolution (the resolver
  given to aiohttp refuses a private answer), so a name rebound to a private
  address after `webhooks add` is still refused.
* **Log.**  Every attempt becomes a row, written by `DeliveryLog` in
  micro-batches; stop() writes what is queued.

Runs on a loop thread of its own, so a slow endpoint never delays the
server's control plane (misses, admin routes).
"""
from __future__ import annotations

import array
import asyncio
import collections
import hashlib
import heapq
import ipaddress
import logging
import random
import secrets
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, List, Optional

import orjson

from beastnet import ControlPlane, ResponseTable, StartStop, UDPPusher
from beastnet.metrics import MetricFamily, push_families
from beastnet.serve.upstream import DEFAULT_MAX_BYTES, read_capped
from beastnet.serve.webhooks import (WebhookError, check_address, parse_endpoint,
                                     resolve_endpoint, sign_headers)

if TYPE_CHECKING:
    from beastnet.serve.stores import Subscriptions

__all__ = ["DeliveryLog", "PushSettings", "WebhookPusher", "percentiles"]

log = logging.getLogger("beastnet.serve.push")

USER_AGENT = "beastnet-webhooks/1"
# How often the store is checked for subscriptions added, changed or removed
# by another process (the CLI), and how long a UDP endpoint's resolution is kept.
RELOAD_S = 1.0
UDP_RESOLVE_TTL_S = 60.0
# Subscriptions due within this much of each other go out in one tick (one
# native push): with 1,000 subscriptions over 3 s, ticks are ~3 ms apart,
# and each costs a loop wake-up whatever it sends.
TICK_SLACK_S = 0.002
LATENCY_SAMPLES = 8192      # recent latencies kept per method for the percentiles
SNDBUF_BYTES = 4 * 1024 * 1024


@dataclass
class PushSettings:
    """The delivery engine's knobs (ServeConfig's webhook_* settings)."""

    allow_private: bool = False
    timeout_s: float = 5.0
    max_attempts: int = 3
    backoff_base_ms: float = 1000.0
    retry_after_max_s: float = 60.0
    disable_after_s: float = 3600.0
    ca_file: Optional[str] = None
    log_batch_rows: int = 300
    log_interval_s: float = 0.1
    log_retention_s: float = 7 * 86400.0
    response_max_bytes: int = DEFAULT_MAX_BYTES     # of a receiver's answer; the rest is cut
    warn_after_failures: int = 5        # failed cycles in a row before one warning

    @classmethod
    def from_config(cls, cfg: Any) -> "PushSettings":
        return cls(allow_private=cfg.webhooks_allow_private, timeout_s=cfg.webhook_timeout_s,
                   max_attempts=cfg.webhook_max_attempts,
                   backoff_base_ms=cfg.webhook_backoff_base_ms,
                   retry_after_max_s=cfg.webhook_retry_after_max_s,
                   disable_after_s=cfg.webhook_disable_after_s, ca_file=cfg.webhook_ca_file,
                   log_batch_rows=cfg.webhook_log_batch_rows,
                   log_interval_s=cfg.webhook_log_interval_s,
                   log_retention_s=cfg.webhook_log_retention_s,
                   response_max_bytes=cfg.webhook_response_max_bytes,
                   warn_after_failures=cfg.webhook_warn_after_failures)


def percentiles(samples: Any, points: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of `samples` (empty: {})."""
    values = sorted(samples)
    if not values:
        return {}
    return {f"p{p:g}": values[min(len(values) - 1, int(len(values) * p / 100))] for p in points}


class DeliveryLog:
    """Delivery-log rows written to the store in micro-batches: when
    `batch_rows` are queued or `interval_s` has passed, whichever comes
    first, on a thread of its own (SQLite calls block).  stop() writes every
    queued row; a failed write keeps its rows for the next one."""

    def __init__(self, store: "Subscriptions", batch_rows: int = 300, interval_s: float = 0.1,
                 retention_s: float = 7 * 86400.0) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.written = 0
        self.writes = 0
        self.write_errors = 0
        self.pruned = 0
        self._rows: list[tuple] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="beastnet-webhook-log", daemon=True)

    def start(self) -> "DeliveryLog":
        self._thread.start()
        return self

    def add(self, row: tuple) -> None:
        with self._cond:
            self._rows.append(row)
            if len(self._rows) >= self.batch_rows:
                self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        with self._cond:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self.store.write_log(rows)
        except WebhookError as exc:
            self.write_errors += 1
            log.warning("webhook log: %s", exc)
            with self._cond:
                self._rows[:0] = rows
            return 0
        self.written += len(rows)
        self.writes += 1
        return len(rows)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            with self._cond:
                if not self._stop and len(self._rows) < self.batch_rows:
                    self._cond.wait(self.interval_s)
                stopping = self._stop
            self.flush()
            if stopping:
                return
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 60.0
                try:
                    self.pruned += self.store.prune_log(self.retention_s)
                except WebhookError as exc:
                    log.warning("webhook log prune: %s", exc)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        while self._rows and self.flush():        # whatever came in after the thread's last write
            pass


@dataclass
class _Sub:
    id: str
    method: str
    url: str
    host: str
    port: int
    interval_s: float
    assets: list[str]
    secrets: list[str]
    style: str
    phase_s: float
    next_due: float = 0.0
    busy: bool = False                  # an HTTPS delivery (with its retries) is under way
    failing_since: Optional[float] = None
    failures_in_row: int = 0            # HTTPS cycles that ended undelivered, since the last 2xx
    target: int = -1                    # UDP: its index in the pusher's targets, -1 = unresolved
    last_fired: float = 0.0             # wall clock of its last cycle, 0 = none yet
    assets_json: str = "[]"             # its assets as the log's asset_list, built at reload


@dataclass
class _MethodStats:
    deliveries: int = 0                 # delivered (HTTPS: 2xx; UDP: every datagram sent)
    failures: int = 0                   # cycles that ended undelivered
    attempts: int = 0
    retries: int = 0
    latency_ms: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))


def _guarded_resolver(allow_private: bool) -> Any:
    """aiohttp's resolver with the SSRF guard on every answer: the
    connection goes only to addresses checked here, so DNS rebinding after
    the check is not possible.  Built on first use: aiohttp is imported only
    by a process that pushes."""
    from aiohttp.abc import AbstractResolver, ResolveResult

    class GuardedResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> List[ResolveResult]:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
            except socket.gaierror as exc:
                raise OSError(exc.errno, f"host {host!r} does not resolve: {exc.strerror}") \
                    from None
            out: List[ResolveResult] = []
            for fam, _, proto, _, sockaddr in infos:
                try:
                    check_address(str(sockaddr[0]), allow_private)
                except WebhookError as exc:
                    raise OSError(0, f"SSRF guard: {exc}") from None
                out.append({"hostname": host, "host": str(sockaddr[0]), "port": int(sockaddr[1]),
                            "family": fam, "proto": proto, "flags": socket.AI_NUMERICHOST})
            return out

        async def close(self) -> None:
            pass

    return GuardedResolver()


def _tracking_connector(**kwargs: Any) -> Any:
    """aiohttp's TCPConnector that remembers the TLS transports it hands out,
    so stop() can abort the ones not yet closed.  A cancelled or timed-out
    request closes its TLS connection gracefully (close_notify, then wait for
    the peer's); a peer that never answers leaves that shutdown pending when
    the loop closes, and uvloop then fails closing its own handles (EBUSY,
    the socket leaked).  The transport is kept from connect() on: aiohttp's
    protocol forgets it as soon as it asks for the graceful close, which is
    when the shutdown starts, not when it ends.  aiohttp's
    `enable_cleanup_closed` would do this, but is ignored on CPython 3.11."""
    import weakref

    import aiohttp

    class TrackingConnector(aiohttp.TCPConnector):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            # protocol -> its TLS transport.  An entry lives while the
            # protocol does: uvloop's TLS layer holds the protocol until the
            # connection is lost, so a shutdown still pending keeps its entry.
            self.tls_transports: "weakref.WeakKeyDictionary[Any, Any]" = (
                weakref.WeakKeyDictionary())

        async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            transport = proto.transport if proto is not None else None
            if transport is not None and transport.get_extra_info("sslcontext") is not None:
                self.tls_transports[proto] = transport
            return conn

        def abort_tls(self) -> int:
            # abort() on a transport already closed is a no-op in uvloop.
            transports = list(self.tls_transports.values())
            for transport in transports:
                transport.abort()
            return len(transports)

    return TrackingConnector(**kwargs)


def _sockaddr(family: int, address: str, port: int, v6_socket: bool) -> bytes:
    """The kernel's sockaddr for (address, port): sockaddr_in6 on the dual-stack
    socket (IPv4 as v4-mapped), sockaddr_in on a v4-only one."""
    if v6_socket:
        if family == socket.AF_INET:
            address = "::ffff:" + address
        host, _, scope = address.partition("%")
        scope_id = socket.if_nametoindex(scope) if scope else 0
        return (struct.pack("=H", socket.AF_INET6)
                + struct.pack("!HI16s", port, 0, socket.inet_pton(socket.AF_INET6, host))
                + struct.pack("=I", scope_id))
    return (struct.pack("=H", socket.AF_INET)
            + struct.pack("!H4s8x", port, socket.inet_pton(socket.AF_INET, address)))


def _retry_after_s(value: Optional[str]) -> Optional[float]:
    """Retry-After in seconds: delta-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class WebhookPusher(StartStop):
    """Pushes `table`'s bodies to the active subscriptions of `store`."""

    def __init__(self, table: ResponseTable, store: "Subscriptions", assets: list[str],
                 settings: Optional[PushSettings] = None, node_id: Optional[str] = None) -> None:
        self.table = table
        # A WebhookStore, or with `node_id` a RedisWebhookStore shared by the
        # cluster: then this node pushes only the subscriptions it owns.
        self.store: Any = store
        self.node_id = node_id
        self.live_nodes: list[str] = []     # the cluster's live nodes at the last check
        self._store_error: Optional[str] = None     # the last reload error, until one works
        self.settings = settings or PushSettings()
        self.assets = list(assets)
        self._asset_index = {a: i for i, a in enumerate(self.assets)}
        self.log = DeliveryLog(store, self.settings.log_batch_rows, self.settings.log_interval_s,
                               self.settings.log_retention_s)
        self.control = ControlPlane("beastnet-webhooks")
        self.stats_by_method = {"udp": _MethodStats(), "https": _MethodStats()}
        self.cycles = 0
        self.cycles_skipped_late = 0        # more than one interval late: skipped
        self.cycles_skipped_busy = 0        # HTTPS: the previous delivery still retrying
        self.disabled = 0                   # subscriptions this process disabled
        self.ssrf_refused = 0               # attempts refused by the SSRF guard
        self.lateness_ms: collections.deque = collections.deque(maxlen=LATENCY_SAMPLES)
        # |actual interval - nominal| between a subscription's consecutive cycles
        self.interval_error_ms: collections.deque = collections.deque(maxlen=LATENCY_SAMPLES)
        self.subs: dict[str, _Sub] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._version: Optional[tuple] = None
        self._udp_resolved: dict[str, tuple[float, bytes]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._main: Optional[asyncio.Future] = None
        self._wake = False                  # reload_now() was called
        self._waiter: Optional[asyncio.Future] = None
        self._session: Any = None
        self._sock, v6 = self._udp_socket()
        self._v6 = v6
        self.udp = UDPPusher(table, self.assets, self._sock)
        self._stopped = False

    @staticmethod
    def _udp_socket() -> tuple[socket.socket, bool]:
        """One dual-stack socket if the host has IPv6, else an IPv4 one."""
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            v6 = True
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v6 = False
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        except OSError as exc:                    # the kernel's cap applies; still usable
            log.warning("webhook UDP socket SO_SNDBUF %d: %s", SNDBUF_BYTES, exc)
        return sock, v6

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "WebhookPusher":
        import aiohttp              # the `webhooks` extra: only a pushing process needs it

        self.log.start()
        self.control.start()

        async def setup() -> None:
            ctx = ssl.create_default_context(cafile=self.settings.ca_file)
            connector = _tracking_connector(
                ssl=ctx, resolver=_guarded_resolver(self.settings.allow_private),
                use_dns_cache=False, limit=0, limit_per_host=8, keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._main = asyncio.ensure_future(self._run())

        asyncio.run_coroutine_threadsafe(setup(), self.control.loop).result(10.0)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop pushing: deliveries under way are cancelled (each logged as
        such), the HTTP pool closed, the log written out."""
        if self._stopped:
            return
        self._stopped = True

        async def shutdown() -> None:
            tasks = [t for t in (self._main, *self._tasks) if t is not None]
            for task in tasks:
                task.cancel()
            # After cancel(): each request sees its CancelledError first (and
            # logs "cancelled: stopping"), then the aborted connection.
            if self._session is not None:
                self._session.connector.abort_tls()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is not None:
                # Again: a request cancelled mid-flight closed its connection
                # gracefully while it unwound, after the first pass.
                self._session.connector.abort_tls()
                await self._session.close()

        if self.control.running:
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.control.loop).result(timeout_s)
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("webhook push: shutdown took over %.1f s", timeout_s)
            self.control.stop(timeout_s)
        self.log.stop()
        self._sock.close()

    def reload_now(self) -> None:
        """Pick up store changes at once (the admin routes call this)."""
        if self.control.running:
            self.control.call_soon(self._on_wake)

    def _on_wake(self) -> None:
        self._wake = True
        self._resume(self._waiter)

    @staticmethod
    def _resume(waiter: Optional[asyncio.Future]) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- schedule ------------------------------------------------------------------

    @staticmethod
    def phase_s(sub_id: str, interval_s: float) -> float:
        """Where in its interval a subscription fires: stable across restarts."""
        h = int.from_bytes(hashlib.sha256(sub_id.encode()).digest()[:8], "big")
        return (h / 2.0 ** 64) * interval_s

    @staticmethod
    def next_due(phase_s: float, interval_s: float, after: float) -> float:
        """The first `phase + k * interval` strictly after `after`."""
        k = int((after - phase_s) // interval_s) + 1
        # `after` may itself be a grid point that rounding puts a hair below
        # (k-1) * interval: step on so a subscription never fires twice.
        while phase_s + k * interval_s <= after:
            k += 1
        return phase_s + k * interval_s

    def _check_nodes(self) -> bool:
        """Read the cluster's live nodes; True if the set changed (ownership
        moves).  This node always counts itself: it is pushing, and a
        snapshot lost in a Redis restart is rewritten within an interval."""
        assert self.node_id is not None
        live: list[str] = sorted(set(self.store.live_nodes()) | {self.node_id})
        if live == self.live_nodes:
            return False
        log.info("webhook push: live nodes %s", ", ".join(live),
                 extra={"fields": {"event": "webhook_nodes", "nodes": live}})
        self.live_nodes = live
        return True

    def owns(self, sub_id: str) -> bool:
        """Whether this node pushes `sub_id` (alone: always)."""
        from beastnet.serve.webhooks_cluster import owner
        return self.node_id is None or owner(sub_id, self.live_nodes or [self.node_id]) \
            == self.node_id

    def _reload(self) -> None:
        """Rebuild the subscriptions from the store; the schedule of one whose
        interval is unchanged carries on where it was."""
        self._version = self.store.version()
        now = time.time()
        old = self.subs
        subs: dict[str, _Sub] = {}
        for row in self.store.list("active"):
            if not self.owns(row["id"]):
                continue                    # another live node pushes it
            tier = self.store.tiers.get(row["tier"])
            if tier is None:
                continue                    # tier removed from config: not pushed
            try:
                ep = parse_endpoint(row["endpoint"])
            except WebhookError:
                continue
            sub = _Sub(row["id"], ep.method, ep.url, ep.host, ep.port, tier.interval_s,
                       [a for a in row["assets"] if a in self._asset_index], row["secrets"],
                       row["style"], self.phase_s(row["id"], tier.interval_s))
            sub.assets_json = orjson.dumps(sub.assets).decode()
            prev = old.get(sub.id)
            if prev is not None:
                # The same object carries on: a delivery under way holds it and
                # clears `busy` on it when done.
                if prev.interval_s != sub.interval_s:
                    prev.next_due = self.next_due(sub.phase_s, sub.interval_s, now)
                for name in ("method", "url", "host", "port", "interval_s", "assets", "secrets",
                             "style", "phase_s", "assets_json"):
                    setattr(prev, name, getattr(sub, name))
                sub = prev
            else:
                sub.next_due = self.next_due(sub.phase_s, sub.interval_s, now)
            subs[sub.id] = sub
        self.subs = subs
        self._build_udp_targets(now)
        self._heap = [(s.next_due, i, s.id) for i, s in enumerate(subs.values())]
        self._seq = len(self._heap)
        heapq.heapify(self._heap)

    def _build_udp_targets(self, now: float) -> None:
        targets: list[tuple[bytes, list[int]]] = []
        for sub in self.subs.values():
            if sub.method != "udp":
                continue
            sub.target = -1
            cached = self._udp_resolved.get(sub.url)
            if cached is None or now - cached[0] > UDP_RESOLVE_TTL_S:
                try:
                    family, address = resolve_endpoint(sub.host, sub.port,
                                                       self.settings.allow_private,
                                                       socket.SOCK_DGRAM)[0]
                    if family == socket.AF_INET6 and not self._v6:
                        raise WebhookError("an IPv6 address, and this host has no IPv6")
                    cached = (now, _sockaddr(family, address, sub.port, self._v6))
                except (WebhookError, OSError) as exc:
                    # Kept unresolved: every cycle logs the refusal until it resolves.
                    self.ssrf_refused += "SSRF" in str(exc) or "refused" in str(exc)
                    log.warning("webhook %s: %s", sub.id, exc,
                                extra={"fields": {"event": "webhook_unresolved", "id": sub.id}})
                    continue
                self._udp_resolved[sub.url] = cached
            sub.target = len(targets)
            targets.append((cached[1], [self._asset_index[a] for a in sub.assets]))
        self.udp.set_targets(targets)

    def _refresh(self, force: bool) -> bool:
        """Reload if the store changed, the cluster's live nodes changed
        (ownership moves), or `force`; True if it reloaded.  A store that
        does not answer is reported once per outage, and the subscriptions
        loaded last keep being pushed until it answers."""
        try:
            moved = self.node_id is not None and self._check_nodes()
            if not (force or moved or self.store.version() != self._version):
                return False
            self._reload()
        except WebhookError as exc:
            if str(exc) != self._store_error:
                log.warning("webhook reload: %s", exc)
            self._store_error = str(exc)
            self._version = None            # reload once the store answers again
            return False
        self._store_error = None
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._refresh(force=True)
        next_check = time.monotonic() + RELOAD_S
        next_resolve = time.monotonic() + UDP_RESOLVE_TTL_S
        while True:
            if self._wake or time.monotonic() >= next_check:
                self._wake = False
                next_check = time.monotonic() + RELOAD_S
                # A reload resolves (and checks) the UDP names again.
                if self._refresh(force=time.monotonic() >= next_resolve):
                    next_resolve = time.monotonic() + UDP_RESOLVE_TTL_S
            now = time.time()
            if not self._heap or self._heap[0][0] > now + TICK_SLACK_S:
                wait = RELOAD_S if not self._heap else min(self._heap[0][0] - now, RELOAD_S)
                # A bare future and a timer: cheaper per tick than wait_for's task.
                self._waiter = loop.create_future()
                timer = loop.call_later(max(wait, 0.0), self._resume, self._waiter)
                try:
                    await self._waiter
                finally:
                    timer.cancel()
                    self._waiter = None
                continue
            self._fire_due(now)

    def _fire_due(self, now: float) -> None:
        """Every subscription due by `now`: UDP ones in one native push, HTTPS
        ones as tasks; each rescheduled on its grid."""
        udp_due: list[_Sub] = []
        while self._heap and self._heap[0][0] <= now + TICK_SLACK_S:
            due, _, sub_id = heapq.heappop(self._heap)
            sub = self.subs.get(sub_id)
            if sub is None or sub.next_due != due:
                continue                    # removed, or rescheduled by a reload
            late = max(now - due, 0.0)
            sub.next_due = self.next_due(sub.phase_s, sub.interval_s, max(now, due))
            self._seq += 1
            heapq.heappush(self._heap, (sub.next_due, self._seq, sub.id))
            # Grid points after `due` that a stall of the loop jumped over are
            # skipped cycles too (a 0.9 s stall at 0.3 s passes two of them).
            passed = max(0, round((sub.next_due - due) / sub.interval_s) - 1)
            self.cycles_skipped_late += passed
            if late > sub.interval_s:
                self.cycles_skipped_late += 1
                continue
            self.cycles += 1
            self.lateness_ms.append(late * 1000.0)
            if sub.last_fired:
                self.interval_error_ms.append(abs(now - sub.last_fired - sub.interval_s) * 1000.0)
            sub.last_fired = now
            if sub.method == "udp":
                udp_due.append(sub)
            elif sub.busy:
                self.cycles_skipped_busy += 1
            else:
                sub.busy = True
                task = asyncio.ensure_future(self._deliver_https(sub))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if udp_due:
            self._push_udp(udp_due)

    # -- UDP -----------------------------------------------------------------------

    def _push_udp(self, due: list[_Sub]) -> None:
        stats = self.stats_by_method["udp"]
        ready = [s for s in due if s.target >= 0]
        targets = array.array("I", [s.target for s in ready])
        sent = array.array("I", bytes(4 * len(ready)))
        t0 = time.perf_counter()
        self.udp.push(targets, sent)
        ms = (time.perf_counter() - t0) * 1000.0
        now = time.time()
        stats.latency_ms.append(ms)
        for sub, n in zip(ready, sent):
            ok = n == len(sub.assets)
            stats.attempts += 1
            if ok:
                stats.deliveries += 1
            else:
                stats.failures += 1
            # The subscription's asset list, built at reload: no per-datagram
            # work here, and no prices (reading them back would be).
            self.log.add((now, sub.id, "", "udp", n, 1, 0, int(ok), ms,
                          "" if ok else f"{len(sub.assets) - n} of {len(sub.assets)} not sent",
                          sub.assets_json, None, None))
        for sub in due:
            if sub.target < 0:
                stats.attempts += 1
                stats.failures += 1
                self.log.add((now, sub.id, "", "udp", 0, 1, 0, 0, 0.0,
                              "endpoint unresolved or refused", sub.assets_json, None, None))

    # -- HTTPS ---------------------------------------------------------------------

    def _payload(self, sub: _Sub) -> tuple[bytes, tuple[int, str, Optional[str], Optional[str]]]:
        """The POST body, and what the log records of it: the count, the
        assets carried, and each body's price and source.  The bodies are in
        hand and small: one orjson parse each, once per cycle (not per attempt)."""
        assets: list[str] = []
        bodies: list[bytes] = []
        prices: list[Any] = []
        sources: list[Any] = []
        for asset in sub.assets:
            b = self.table.get(asset)
            if b is None:
                continue
            assets.append(asset)
            bodies.append(b)
            try:
                doc = orjson.loads(b)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                doc = {}
            prices.append(doc.get("price"))
            sources.append(doc.get("source"))
        meta = (len(assets), orjson.dumps(assets).decode(), orjson.dumps(prices).decode(),
                orjson.dumps(sources).decode())
        return b"[" + b",".join(bodies) + b"]", meta

    async def _deliver_https(self, sub: _Sub) -> None:
        """One cycle's delivery: attempts until a 2xx, a 410 or the last attempt."""
        import aiohttp

        s = self.settings
        stats = self.stats_by_method["https"]
        body, meta = self._payload(sub)
        msg_id = "msg_" + secrets.token_urlsafe(16)
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        attempt = 0
        try:
            while True:
                attempt += 1
                stats.attempts += 1
                status, error, retry_after = 0, "", None
                headers = sign_headers(sub.secrets, msg_id, int(time.time()), body, sub.style)
                headers["Content-Type"] = "application/json"
                headers["User-Agent"] = USER_AGENT
                t0 = time.perf_counter()
                try:
                    self._guard_literal(sub.host)
                    async with self._session.post(sub.url, data=body, headers=headers,
                                                  allow_redirects=False,
                                                  timeout=timeout) as resp:
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                        # The status is the answer; of the body only a bounded
                        # head is read (a receiver must not fill our memory).
                        # One cut short by the peer still fails the attempt.
                        await read_capped(resp, s.response_max_bytes)
                except asyncio.TimeoutError:
                    error = f"timeout after {s.timeout_s:g} s"
                except asyncio.CancelledError:
                    self._log_https(sub, msg_id, attempt, status, t0, "cancelled: stopping", meta)
                    raise
                except (aiohttp.ClientError, OSError, WebhookError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
                    if "SSRF" in error or "refused (allowed" in error:
                        self.ssrf_refused += 1
                ok = not error and 200 <= status < 300
                if not error and not ok:
                    error = f"HTTP {status}" + (" (redirects are not followed)"
                                                if 300 <= status < 400 else "")
                ms = self._log_https(sub, msg_id, attempt, status, t0, error, meta, ok)
                stats.latency_ms.append(ms)
                if ok:
                    stats.deliveries += 1
                    if sub.failures_in_row >= s.warn_after_failures:
                        log.warning("webhook %s delivering again after %d failed cycles",
                                    sub.id, sub.failures_in_row,
                                    extra={"fields": {"event": "webhook_recovered",
                                                      "id": sub.id}})
                    sub.failing_since = None
                    sub.failures_in_row = 0
                    return
                if status == 410:
                    stats.failures += 1
                    self._disable(sub, "the endpoint answered 410 Gone")
                    return
                if attempt >= s.max_attempts:
                    stats.failures += 1
                    self._note_failure(sub, error)
                    return
                stats.retries += 1
                delay = random.uniform(0.0, s.backoff_base_ms * 2 ** (attempt - 1) / 1000.0)
                if status in (429, 503):
                    wait = _retry_after_s(retry_after)
                    if wait is not None:
                        delay = max(delay, min(wait, s.retry_after_max_s))
                await asyncio.sleep(delay)
        finally:
            sub.busy = False

    def _guard_literal(self, host: str) -> None:
        """aiohttp skips the resolver for an IP literal: check it here."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return                          # a name: _GuardedResolver checks its answers
        check_address(host, self.settings.allow_private)

    def _log_https(self, sub: _Sub, msg_id: str, attempt: int, status: int, t0: float,
                   error: str, meta: tuple[int, str, Optional[str], Optional[str]],
                   ok: bool = False) -> float:
        ms = (time.perf_counter() - t0) * 1000.0
        count, asset_list, prices, sources = meta
        self.log.add((time.time(), sub.id, msg_id, "https", count, attempt, status,
                      int(ok), ms, error, asset_list, prices, sources))
        return ms

    def _note_failure(self, sub: _Sub, error: str) -> None:
        """A cycle ended undelivered: one warning when a streak reaches
        warn_after_failures (an operator hears of a dead receiver long before
        it is disabled), then disabled once failing for disable_after_s."""
        now = time.time()
        sub.failures_in_row += 1
        if sub.failures_in_row == self.settings.warn_after_failures:
            log.warning("webhook %s: %d cycles in a row undelivered to %s (last: %s); "
                        "disabled if still failing after %g s", sub.id, sub.failures_in_row,
                        sub.url, error, self.settings.disable_after_s,
                        extra={"fields": {"event": "webhook_failing", "id": sub.id,
                                          "failures": sub.failures_in_row}})
        if sub.failing_since is None:
            sub.failing_since = now
        elif now - sub.failing_since >= self.settings.disable_after_s:
            self._disable(sub, f"failing for {now - sub.failing_since:.0f} s")

    def _disable(self, sub: _Sub, reason: str) -> None:
        try:
            self.store.set_state(sub.id, "disabled", reason)
        except WebhookError as exc:
            log.warning("webhook %s: could not disable: %s", sub.id, exc)
        self.subs.pop(sub.id, None)
        self.disabled += 1
        log.warning("webhook %s disabled: %s", sub.id, reason,
                    extra={"fields": {"event": "webhook_disabled", "id": sub.id,
                                      "reason": reason}})

    # -- telemetry -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What /admin/stats shows under "webhooks"."""
        methods = {}
        for name, m in self.stats_by_method.items():
            methods[name] = {"deliveries": m.deliveries, "failures": m.failures,
                             "attempts": m.attempts, "retries": m.retries,
                             "latency_ms": {k: round(v, 3) for k, v in
                                            percentiles(list(m.latency_ms)).items()}}
        cluster = {} if self.node_id is None else {
            "cluster": {"node_id": self.node_id, "live_nodes": self.live_nodes}}
        return {**cluster, "subscriptions": len(self.subs), "cycles": self.cycles,
                "cycles_skipped_late": self.cycles_skipped_late,
                "cycles_skipped_busy": self.cycles_skipped_busy, "disabled": self.disabled,
                "ssrf_refused": self.ssrf_refused,
                "cycle_lateness_ms": {k: round(v, 3) for k, v in
                                      percentiles(list(self.lateness_ms)).items()},
                "cycle_interval_error_ms": {k: round(v, 3) for k, v in
                                            percentiles(list(self.interval_error_ms)).items()},
                "methods": methods, "udp": self.udp.stats(),
                "log": {"written": self.log.written, "pending": self.log.pending,
                        "writes": self.log.writes, "write_errors": self.log.write_errors}}

    def families(self, prefix: str = "beastnet_webhook") -> list[MetricFamily]:
        """Prometheus families: counts per method, latency percentiles per method."""
        fams = {name: MetricFamily(f"{prefix}_{name}", "counter", text) for name, text in (
            ("deliveries", "Deliveries that arrived (HTTPS: 2xx; UDP: every datagram sent)."),
            ("failures", "Cycles that ended undelivered."),
            ("attempts", "Delivery attempts."),
            ("retries", "HTTPS attempts repeated after a failure."))}
        latency = MetricFamily(f"{prefix}_latency_ms", "gauge",
                               "Delivery latency percentiles over recent attempts, ms.")
        for method, m in self.stats_by_method.items():
            for name, fam in fams.items():
                fam.add(getattr(m, name), method=method)
            for q, v in percentiles(list(m.latency_ms)).items():
                latency.add(round(v, 3), method=method, quantile=q)
        return list(fams.values()) + [
            latency,
            MetricFamily(f"{prefix}_subscriptions_disabled", "counter",
                         "Subscriptions disabled by this process (410, or failing too long).")
            .add(self.disabled),
            MetricFamily(f"{prefix}_ssrf_refused", "counter",
                         "Attempts refused because the endpoint resolved to a private address.")
            .add(self.ssrf_refused),
            MetricFamily(f"{prefix}_cycles_skipped", "counter", "Cycles skipped, by reason.")
            .add(self.cycles_skipped_late, reason="late").add(self.cycles_skipped_busy,
                                                              reason="busy"),
            MetricFamily(f"{prefix}_subscriptions_active", "gauge", "Active subscriptions pushed.")
            .add(len(self.subs)),
        ] + push_families(self.udp.stats(), f"{prefix}_udp")

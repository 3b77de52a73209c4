"""The bundled price server: `beastnet serve`.

One `ResponseTable` of 150 assets, fed by a simulated or replayed feed and
served over UDP and HTTP by the native engines; API keys and usage from the
SQLite key store; telemetry, Prometheus metrics and admin routes on an admin
listener of their own (loopback by default), apart from the public HTTP port.
Built only on the public API.
"""
from __future__ import annotations

import asyncio
import errno
import importlib.resources
import logging
import os
import resource
import secrets
import signal
import socket
import threading
import time
from typing import Any, Optional
from urllib.parse import parse_qs

import orjson

from beastnet import (Answer, APIKeyTable, ControlPlane, HTTPServer, MissRequest, ResponseTable,
                      ServerError, TLSConfig, TLSConfigError, UDPServer, WebSocketOptions)
from beastnet.metrics import (CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricFamily, http_families,
                              render, udp_families)
from beastnet.serve.assets import ASSETS
from beastnet.serve.config import LIVE_PARAMETERS, ServeConfig, apply_live
from beastnet.serve.feeds import Feed, PricePublisher, ReplayFeed, SimulatedFeed, open_feed
from beastnet.serve.keys import KeyStore, UsageFlusher, configured_tiers
from beastnet.serve.metrics import feed_families, key_families
from beastnet.serve.systemd import notify

__all__ = ["PortInUseError", "PriceService", "check_port_free"]

log = logging.getLogger("beastnet.serve.service")

# The admin listener's routes and the methods each takes; anything else there
# is a 404.  The public port serves only /healthz of these (load balancers
# probe it) and answers 404 for the rest: behind a reverse proxy on the same
# host every client looks local, so the public port cannot tell an operator
# from the internet.
ROUTES: dict[str, tuple[str, ...]] = {
    "/healthz": ("GET", "HEAD"),
    "/metrics": ("GET", "HEAD"),
    "/admin/stats": ("GET", "HEAD"),
    "/admin/reset": ("POST",),
    "/admin/profile": ("GET", "HEAD", "POST"),
    "/admin/cluster-stats": ("GET", "HEAD"),
    "/admin/keys": ("POST",),
}
# Webhook subscriptions (served when `webhooks` is on); parameters in the query string.
WEBHOOK_ROUTES: dict[str, tuple[str, ...]] = {
    "/admin/webhooks": ("GET", "HEAD", "POST"),
    "/admin/webhooks/pause": ("POST",),
    "/admin/webhooks/resume": ("POST",),
    "/admin/webhooks/remove": ("POST",),
    "/admin/webhooks/rotate-secret": ("POST",),
    "/admin/webhooks/log": ("GET", "HEAD"),
}
ROUTES.update(WEBHOOK_ROUTES)
PUBLIC_ROUTES = ("/healthz",)
DASHBOARD_ROUTES = ("/", "/dashboard")
# The topic the stream publishes feed health on, once a second (the live page
# shows it); a name no asset has.
HEALTH_TOPIC = "feed.health"

# Descriptors the process holds besides client connections: stdio, SQLite,
# the control loop, and per engine thread a listening socket, an epoll fd and
# eventfds.  Counted when the open-file limit is checked against the
# connection caps.
FD_BASE_RESERVE = 64
FD_PER_THREAD = 4

NOT_FOUND = Answer({"error": "not_found"}, status=404)
def method_not_allowed(methods: tuple[str, ...]) -> Answer:
    """405 naming the methods the path takes (its Allow header)."""
    return Answer({"error": "method_not_allowed"}, status=405, allow=", ".join(methods))


class PortInUseError(ServerError):
    """Another socket already holds the address a server is to bind."""

    def __init__(self, message: str, protocol: str) -> None:
        super().__init__(message)
        self.protocol = protocol        #: "UDP", "HTTP" or "admin"


def check_port_free(host: str, port: int, socktype: int, what: str) -> None:
    """Raise PortInUseError if another process holds `host`:`port`.

    The engines bind with SO_REUSEPORT, so a second server started by the same
    user on an occupied port would bind without error and take part of the
    traffic.  A probe bound without SO_REUSEPORT fails with EADDRINUSE exactly
    when some socket holds the port (a TCP probe sets SO_REUSEADDR, so
    connections in TIME_WAIT do not count).  Port 0 picks a free port: nothing
    to check.  A host that does not resolve is reported here; what the kernel
    refuses otherwise is left to the real bind.  A server binding between the
    probe and our bind is not caught: that takes two starts in the same instant.
    """
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socktype,
                                                       flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ServerError(f"{what} host {host!r}: {exc.strerror}") from None
    if port == 0:
        return
    with socket.socket(family, socktype) as probe:
        if socktype == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"{what} port {port} on {host} is in use by another process",
                                     what) from None


class _RateSampler:
    """Per-second rates from counter deltas, sampled on the control loop."""

    def __init__(self) -> None:
        self.previous: Optional[tuple[float, dict[str, int]]] = None
        self.rates: dict[str, float] = {}

    def sample(self, totals: dict[str, int]) -> None:
        now = time.monotonic()
        if self.previous is not None:
            then, old = self.previous
            dt = max(now - then, 1e-9)
            self.rates = {k: round((v - old.get(k, 0)) / dt, 1) for k, v in totals.items()
                          if isinstance(v, int)}
        self.previous = (now, dict(totals))


class PriceService:
    """Everything `beastnet serve` runs, with start(), stop() and drain on SIGTERM.

    One control plane (`control`, a uvloop loop on one thread) runs the feed,
    the rate sampler, the admin routes and both servers' miss dispatchers; the
    servers are given it and never start or stop it themselves.
    """

    def __init__(self, cfg: ServeConfig, feed: Optional[Feed] = None) -> None:
        self.cfg = cfg
        self.table = ResponseTable(capacity=len(ASSETS) * 2)
        self._dashboard: Optional[Answer] = None
        self.api_keys: Optional[APIKeyTable] = None
        self.store: Optional[KeyStore] = None
        self.flusher: Optional[UsageFlusher] = None
        self.cluster: Optional[Any] = None      # a ClusterNode with --redis
        self.publisher = PricePublisher(self.table, ASSETS, stale_after_s=cfg.feed_stale_after_s,
                                        source_priority=cfg.feed_sources)
        self.feed = feed or open_feed(cfg)
        self.control = ControlPlane("beastnet-service")
        self.udp: Optional[UDPServer] = None
        self.http: Optional[HTTPServer] = None
        self.admin: Optional[HTTPServer] = None     # the admin listener
        self.start_profile = cfg.profile
        self.active_keys = 0                    # active keys in the store at start
        self._feed_task: Optional[asyncio.Future] = None
        self._sampler_task: Optional[asyncio.Future] = None
        self._udp_rates = _RateSampler()
        self._http_rates = _RateSampler()
        self._baseline: dict[str, dict[str, int]] = {}
        self._stopped = threading.Event()
        self.started_at = 0.0
        self.webhooks: Any = None               # a WebhookPusher when cfg.webhooks

    # -- lifecycle -----------------------------------------------------------------

    def start(self, warmup_timeout_s: float = 5.0) -> "PriceService":
        cfg = self.cfg
        logging.getLogger("beastnet").setLevel(cfg.log_level.upper())
        try:
            if not cfg.share_ports:
                check_port_free(cfg.udp_host, cfg.udp_port, socket.SOCK_DGRAM, "UDP")
                check_port_free(cfg.http_host, cfg.http_port, socket.SOCK_STREAM, "HTTP")
                check_port_free(cfg.admin_host, cfg.admin_port, socket.SOCK_STREAM, "admin")
            self._fit_open_files()
            if cfg.keystore:
                self._open_key_store(cfg.keystore)
            self.control.start()
            self._feed_task = self.control.run(
                lambda: asyncio.ensure_future(self.publisher.run(self.feed)))
            self._sampler_task = self.control.run(lambda: asyncio.ensure_future(self._sample()))
            if cfg.redis:
                self._join_cluster(cfg.redis)
            self._wait_for_prices(warmup_timeout_s)
            if cfg.webhooks:
                self._start_webhooks()
            self.udp = UDPServer(self.table, cfg.udp_host, cfg.udp_port, sockets=cfg.udp_sockets,
                                 batch=cfg.batch, max_datagram=cfg.max_datagram,
                                 recv_buffer_bytes=cfg.recv_buffer_bytes,
                                 send_buffer_bytes=cfg.send_buffer_bytes,
                                 cpu_steering=cfg.cpu_steering, api_keys=self.api_keys,
                                 control=self.control).start()
            self.admin = self._start_admin()
            self.http = self._start_http()
            if self.cfg.stream:      # known from the start: the page subscribes at once
                self.http.publish(HEALTH_TOPIC, self.publisher.health())
        except BaseException:
            self.stop()
            raise
        self.started_at = time.monotonic()
        return self

    def _open_key_store(self, path: str) -> None:
        created = not os.path.exists(path)
        self.store = KeyStore(path, configured_tiers(self.cfg.tiers))
        self.api_keys = APIKeyTable()
        self.active_keys = self.store.sync_into(self.api_keys)
        self.flusher = UsageFlusher(self.store, self.api_keys,
                                    interval_s=self.cfg.usage_flush_interval_s).start()
        if created:
            log.warning("created key store %s", os.path.abspath(path),
                        extra={"fields": {"event": "keystore_created"}})
        log.info("key store %s: %d active keys", path, self.active_keys)
        for tier, count in sorted(self.store.unknown_tiers().items()):
            log.warning("key store %s: %d active key(s) of unknown tier %r are refused; "
                        "define [tiers.%s] in the config", path, count, tier, tier,
                        extra={"fields": {"event": "unknown_tier", "tier": tier, "keys": count}})

    def _join_cluster(self, url: str) -> None:
        """Register with Redis and lease the shared limits before serving."""
        from beastnet.serve.cluster import ClusterNode, default_node_id
        self.cluster = ClusterNode(
            url, self.cfg.node_id or default_node_id(), snapshot=self._cluster_counters,
            profile=lambda: self.cfg.profile, switch_profile=self.switch_profile,
            api_keys=self.api_keys, store=self.store,
            tiers=self.store.tiers if self.store is not None else None,
            interval_s=self.cfg.snapshot_interval_s, ttl_s=self.cfg.snapshot_ttl_s,
            fallback=self.cfg.redis_fallback,
            usage_interval_s=self.cfg.usage_flush_interval_s)
        asyncio.run_coroutine_threadsafe(self.cluster.start(), self.control.loop).result(10.0)
        log.info("cluster node %s on %s: %s", self.cluster.node_id, url, self.cluster.mode,
                 extra={"fields": {"event": "cluster_joined", "node_id": self.cluster.node_id,
                                   "mode": self.cluster.mode}})

    def _cluster_counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals for the cluster snapshot (rates come from deltas)."""
        out: dict[str, dict[str, int]] = {}
        if self.udp is not None:
            out["udp"] = self.udp.stats()["totals"]
        if self.http is not None:
            out["http"] = self.http.stats()["totals"]
        if self.flusher is not None:
            out["keys"] = {"flushes": self.flusher.flushes,
                           "flush_errors": self.flusher.flush_errors}
        return out
    def _start_webhooks(self) -> None:
        """Push to the store's subscriptions from this process, off the same
        table the engines serve (serve/push.py)."""
        from beastnet.serve.push import PushSettings, WebhookPusher
        from beastnet.serve.webhooks import WebhookStore, webhook_tiers

        if not self.cfg.keystore:
            raise ServerError("webhooks need a keystore (the subscriptions live there); "
                              "drop --no-keys or give --keystore")
        store: Any = WebhookStore(self.cfg.keystore, webhook_tiers(self.cfg.webhook_tiers),
                                  ASSETS, allow_private=self.cfg.webhooks_allow_private)
        node_id = None
        if self.cluster is not None and self.cfg.redis:
            # Subscriptions shared in Redis; this node's log stays in its key store.
            from beastnet.serve.webhooks_cluster import RedisWebhookStore
            store = RedisWebhookStore(self.cfg.redis, store.tiers, ASSETS,
                                      allow_private=store.allow_private, log_store=store)
            node_id = self.cluster.node_id
        self.webhooks = WebhookPusher(self.table, store, list(ASSETS),
                                      PushSettings.from_config(self.cfg), node_id=node_id).start()
        if node_id is not None:
            from beastnet.serve.webhooks import WebhookError
            try:
                store.listen(self.webhooks.reload_now)
            except WebhookError as exc:     # the once-a-second version check still sees changes
                log.warning("webhook changes not heard by pub/sub: %s", exc)
        else:
            log.info("webhook push: %d active subscriptions", len(store.list("active")))

    def _fit_open_files(self) -> None:
        """Make the open-file limit hold both connection caps, so a flood of the
        public port runs into max_connections (and its 503), never into EMFILE,
        and the admin listener keeps room to accept.  Raise the soft limit up
        to the hard one if needed; past that, lower max_connections and say so."""
        cfg = self.cfg
        cpus = len(os.sched_getaffinity(0))
        http_threads = cfg.http_threads or cpus
        threads = (cfg.udp_sockets or cpus) + http_threads + 1      # + the admin listener's
        reserve = FD_BASE_RESERVE + FD_PER_THREAD * threads + cfg.admin_max_connections
        need = cfg.max_connections + reserve
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.warning("setrlimit RLIMIT_NOFILE %d: %s", target, exc)
        if soft == resource.RLIM_INFINITY or soft >= need:
            return
        fit = soft - reserve
        if fit < http_threads:
            raise ServerError(f"the open-file limit ({soft}, ulimit -n) leaves no room for "
                              f"client connections: raise it to at least {need}")
        log.warning("max_connections %d lowered to %d: the open-file limit is %d (ulimit -n) "
                    "and the admin listener and the engines keep %d descriptors for themselves",
                    cfg.max_connections, fit, soft, reserve,
                    extra={"fields": {"event": "max_connections_lowered", "max_connections": fit,
                                      "nofile": soft}})
        cfg.max_connections = fit

    def _start_admin(self) -> HTTPServer:
        """The admin listener: its own address, one thread, its own connection
        cap, and an empty table of its own (prices are served on the public
        port only, where API keys are checked)."""
        cfg = self.cfg
        routes = {path: self._on_admin_route for path in ROUTES}
        return HTTPServer(ResponseTable(capacity=16), cfg.admin_host, cfg.admin_port, threads=1,
                          backlog=min(cfg.backlog, 128), routes=routes,
                          max_connections=cfg.admin_max_connections,
                          idle_timeout_s=cfg.idle_timeout_s,
                          header_timeout_s=cfg.header_timeout_s, control=self.control).start()

    def _start_http(self) -> HTTPServer:
        cfg = self.cfg
        routes = {path: self._on_public_route for path in ROUTES}
        if cfg.dashboard:
            tiers = configured_tiers(cfg.tiers).values() if cfg.keystore else None
            page = dashboard_page(cfg.stream_path if cfg.stream else None, cfg.http_prefix,
                                  None if tiers is None else [t.name for t in tiers if t.stream])
            self._dashboard = Answer(page, content_type="text/html; charset=utf-8")
            routes.update({path: self._on_dashboard for path in DASHBOARD_ROUTES})
        stream = WebSocketOptions(path=cfg.stream_path) if cfg.stream else None
        tls = TLSConfig(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
        return HTTPServer(self.table, cfg.http_host, cfg.http_port, threads=cfg.http_threads,
                          backlog=cfg.backlog, prefix=cfg.http_prefix, routes=routes,
                          miss_queue_size=cfg.miss_queue_size, max_inflight=cfg.max_inflight,
                          max_connections=cfg.max_connections, idle_timeout_s=cfg.idle_timeout_s,
                          header_timeout_s=cfg.header_timeout_s, api_keys=self.api_keys,
                          control=self.control, websocket=stream, tls=tls).start()

    def reload_tls(self) -> bool:
        """SIGHUP: read the public port's certificate and key again.  New
        connections get them; open ones keep theirs; a bad file is logged and
        the old certificate stays.  True when reloaded."""
        if self.http is None or self.http.tls is None:
            log.info("SIGHUP: no TLS certificate to reload", extra={"fields": {"event": "sighup"}})
            return False
        try:
            self.http.reload_tls()
        except TLSConfigError as exc:
            log.error("SIGHUP: TLS reload failed, still serving the previous certificate: %s", exc,
                      extra={"fields": {"event": "tls_reload_failed"}})
            return False
        log.info("SIGHUP: TLS certificate reloaded from %s", self.http.tls.cert_file,
                 extra={"fields": {"event": "tls_reloaded", "cert": self.http.tls.cert_file}})
        return True

    def _on_dashboard(self, request: MissRequest) -> Answer:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed(("GET", "HEAD"))
        assert self._dashboard is not None
        return self._dashboard

    def _wait_for_prices(self, timeout_s: float) -> None:
        """Serve only once the feed has published (a replay may start slowly)."""
        deadline = time.monotonic() + timeout_s
        while len(self.table) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.table) == 0:
            log.warning("no prices after %.1f s: serving anyway (not_found until the feed speaks)",
                        timeout_s)

    def stop(self, grace_s: Optional[float] = None) -> None:
        """Drain: stop accepting, finish in-flight HTTP, stop the feed, flush usage."""
        if self.http is not None:
            self.http.stop(grace_s)
        if self.udp is not None:
            self.udp.stop()
        if self.admin is not None:
            self.admin.stop(0.0)
        for task in (self._feed_task, self._sampler_task):
            if task is not None:
                self.control.call_soon(task.cancel)
        if self.cluster is not None and self.control.running:
            try:        # the last usage push and leaving the nodes hash; Redis may be gone
                asyncio.run_coroutine_threadsafe(self.cluster.stop(),
                                                 self.control.loop).result(5.0)
            except Exception as exc:       # a stop must finish whatever Redis does
                log.warning("cluster stop: %s", exc)
        self.control.stop()
        if self.webhooks is not None:
            self.webhooks.stop()                # the log written out: a clean stop loses no row
            self.webhooks.store.close()
            self.webhooks = None
        if self.flusher is not None:
            self.flusher.stop()                 # the last flush: a clean stop loses no count
        if self.store is not None:
            self.store.close()
        self._stopped.set()

    def __enter__(self) -> "PriceService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT, then drain and return 0.  SIGHUP
        reloads the TLS certificate and goes on."""
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            while (signum := signal.sigwait(signals)) == signal.SIGHUP:
                notify("RELOADING=1", "STATUS=reloading the TLS certificate")
                self.reload_tls()
                notify("READY=1", "STATUS=serving")
            log.info("%s: draining", signal.Signals(signum).name)
            notify("STOPPING=1", f"STATUS=draining after {signal.Signals(signum).name}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.stop()
        return 0

    # -- telemetry -----------------------------------------------------------------

    async def _sample(self) -> None:
        while True:
            if self.udp is not None:
                self._udp_rates.sample(self.udp.stats()["totals"])
            if self.http is not None:
                self._http_rates.sample(self.http.stats()["totals"])
                if self.cfg.stream:
                    # Stream subscribers of HEALTH_TOPIC (the live page) see the feed's state.
                    self.http.publish(HEALTH_TOPIC, self.publisher.health())
            await asyncio.sleep(1.0)

    def _since_reset(self, name: str, totals: dict[str, int]) -> dict[str, int]:
        base = self._baseline.get(name, {})
        return {k: v - base.get(k, 0) if isinstance(v, int) else v for k, v in totals.items()}

    def stats(self) -> dict[str, Any]:
        """Everything /admin/stats shows."""
        out: dict[str, Any] = {"uptime_s": round(time.monotonic() - self.started_at, 3),
                               "profile": self.cfg.profile, "profile_at_start": self.start_profile,
                               "assets": len(self.table)}
        if self.udp is not None:
            udp = self.udp.stats()
            totals = self._since_reset("udp", udp["totals"])
            rx = totals.get("rx_packets", 0)
            misses = totals.get("misses", 0)
            out["udp"] = {
                "address": udp["address"], "sockets": udp["sockets"], "steering": udp["steering"],
                "buffers": udp["buffers"], "totals": totals, "rates_per_s": self._udp_rates.rates,
                "cache_hit_pct": round(100.0 * totals.get("hits", 0) / rx, 3) if rx else None,
                "kernel_drop_pct": round(100.0 * totals.get("kernel_drops", 0)
                                         / (rx + totals.get("kernel_drops", 0)), 3) if rx else None,
                "queue_drop_pct": round(100.0 * totals.get("queue_drops", 0) / misses, 3)
                if misses else None,
                "avg_batch_fill": udp["avg_batch_fill"],
                "per_socket": udp["per_socket"],
            }
        if self.http is not None:
            http = self.http.stats()
            out["http"] = {"address": http["address"], "threads": http["threads"],
                           "totals": self._since_reset("http", http["totals"]),
                           "rates_per_s": self._http_rates.rates,
                           "per_thread": http.get("per_thread", [])}
        if self.admin is not None:
            admin = self.admin.stats()["totals"]
            out["admin"] = {"address": self.admin.address,
                            "totals": {k: admin.get(k, 0) for k in ("accepted", "active",
                                                                    "rejected", "requests")}}
        out["feed"] = self.publisher.health()
        if self.api_keys is not None and self.flusher is not None:
            usage = self.api_keys.usage()
            out["api_keys"] = {"keys": len(usage), "flushes": self.flusher.flushes,
                               "flush_errors": self.flusher.flush_errors,
                               "admitted": sum(v[0] for v in usage.values()),
                               "rate_limited": sum(v[1] for v in usage.values()),
                               "over_quota": sum(v[2] for v in usage.values())}
        if self.webhooks is not None:
            out["webhooks"] = self.webhooks.stats()
        out["live_parameters"] = {name: getattr(self.cfg, name) for name in sorted(LIVE_PARAMETERS)}
        if self.cluster is not None:
            out["cluster"] = self.cluster.status()
        return out

    def metrics(self) -> bytes:
        families: list[MetricFamily] = []
        if self.udp is not None:
            families += udp_families(self.udp.stats())
        if self.http is not None:
            families += http_families(self.http.stats())
        families += feed_families(self.publisher.health())
        if self.api_keys is not None and self.store is not None:
            tiers = {row["key"]: row["tier"] for row in self.store.list()}
            families += key_families(self.api_keys.usage(), tiers)
        if self.webhooks is not None:
            families += self.webhooks.families()
        families.append(MetricFamily("beastnet_uptime_seconds", "gauge", "Seconds since start.")
                        .add(round(time.monotonic() - self.started_at, 3)))
        if self.cluster is not None:
            status = self.cluster.status()
            families.append(MetricFamily(
                "beastnet_cluster_redis_reachable", "gauge",
                "1 while Redis answers (shared limits leased), 0 in the fallback.")
                .add(1 if status["redis_reachable"] else 0, mode=status["mode"]))
        return render(families)

    def reset(self) -> None:
        """Counters shown by /admin/stats start from zero again (native counters
        are monotonic; Prometheus keeps seeing them unchanged)."""
        if self.udp is not None:
            self._baseline["udp"] = dict(self.udp.stats()["totals"])
        if self.http is not None:
            self._baseline["http"] = dict(self.http.stats()["totals"])

    def switch_profile(self, name: str) -> dict[str, Any]:
        changes = apply_live(self.cfg, name)
        for key, value in changes.items():
            setattr(self.cfg, key, value)
        # What /admin/stats and /admin/profile report from now on: the live
        # parameters are `name`'s; the rest stay as started (profile_at_start).
        self.cfg.profile = name
        if "log_level" in changes:
            logging.getLogger("beastnet").setLevel(self.cfg.log_level.upper())
        if "usage_flush_interval_s" in changes and self.flusher is not None:
            self.flusher.interval_s = self.cfg.usage_flush_interval_s
        if "feed_rounds_per_s" in changes and isinstance(self.feed, SimulatedFeed):
            self.feed.rounds_per_s = self.cfg.feed_rounds_per_s
        if "replay_speed" in changes and isinstance(self.feed, ReplayFeed):
            self.feed.speed = self.cfg.replay_speed
        if "feed_stale_after_s" in changes:
            self.publisher.stale_after_s = self.cfg.feed_stale_after_s
        if "max_inflight" in changes and self.http is not None:
            self.http.set_max_inflight(self.cfg.max_inflight)
        log.info("profile %s: changed %s", name, changes)
        return changes

    # -- admin routes --------------------------------------------------------------

    def _health(self) -> Answer:
        # Degraded as soon as any served price is stale: a client reading a
        # stale BTC is not helped by 149 fresh others (docs/serve.md).
        stale = len(self.publisher.stale_assets)
        ok = len(self.table) > 0 and stale == 0
        return Answer({"status": "ok" if ok else "degraded", "assets": len(self.table),
                       "stale_assets": stale}, status=200 if ok else 503)

    def _on_public_route(self, request: MissRequest) -> Any:
        """The public port: /healthz for probes; metrics and admin live on the
        admin listener only."""
        path = request.path or ""
        if path not in PUBLIC_ROUTES:
            return NOT_FOUND
        if request.method not in ROUTES[path]:
            return method_not_allowed(ROUTES[path])
        return self._health()

    def _refusal(self, request: MissRequest) -> Optional[Answer]:
        """Why an admin request is refused, or None.  A credential in the query
        string is refused whatever it holds: query strings end up in proxy
        and access logs.  With a token, the request must carry it in
        `Authorization: Bearer` or `X-API-Key` (the engine hands either over
        as `api_key`)."""
        query = parse_qs(request.query or "", keep_blank_values=True)
        if "token" in query or "api_key" in query:
            return Answer({"error": "bad_request",
                           "detail": "send the admin token in a header (Authorization: Bearer "
                                     "TOKEN, or X-API-Key: TOKEN), not in the URL: query "
                                     "strings end up in logs"}, status=400)
        token = self.cfg.admin_token
        if token is None:
            return None                 # loopback only: the listener's address is the guard
        sent = request.api_key or ""
        if not secrets.compare_digest(sent.encode(), token.encode()):
            return Answer({"error": "unauthorized",
                           "detail": "the admin routes need the token: "
                                     "Authorization: Bearer TOKEN"}, status=401)
        return None

    def _on_admin_route(self, request: MissRequest) -> Any:
        path = request.path or ""
        allowed = ROUTES.get(path)
        if allowed is None:
            return NOT_FOUND
        if request.method not in allowed:
            return method_not_allowed(allowed)
        if path == "/healthz":
            return self._health()       # open to probes, as on the public port
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if path == "/metrics":
            return Answer(self.metrics(), content_type=METRICS_CONTENT_TYPE)
        if path == "/admin/stats":
            return Answer(orjson.dumps(self.stats(), default=str))
        if path in WEBHOOK_ROUTES:
            return self._on_webhooks_route(path, request)
        if path == "/admin/reset":
            self.reset()
            return Answer({"reset": True})
        if path == "/admin/cluster-stats":
            return self._cluster_stats()
        if path == "/admin/keys":
            return self._key_change(parse_qs(request.query or ""))
        query = parse_qs(request.query or "")
        name = query.get("name", [None])[0]
        if request.method == "POST" and name is not None and query.get("scope") == ["cluster"]:
            return self._cluster_profile(name)
        if request.method == "POST" and name is not None:
            try:
                changes = self.switch_profile(name)
            except ValueError as exc:
                return Answer({"error": "bad_request", "detail": str(exc)}, status=400)
            return Answer({"profile": name, "changed": changes})
        return Answer({"profile": self.cfg.profile, "profile_at_start": self.start_profile,
                       "live": {k: getattr(self.cfg, k) for k in sorted(LIVE_PARAMETERS)}})

    def _on_webhooks_route(self, path: str, request: MissRequest) -> Answer:
        """The `beastnet webhooks` actions over the admin listener."""
        from beastnet.serve.webhooks import WebhookError, public_view

        if self.webhooks is None:
            return Answer({"error": "not_found", "detail": "webhooks are off (--webhooks)"},
                          status=404)
        store = self.webhooks.store
        query = {k: v[-1] for k, v in parse_qs(request.query or "").items()}
        try:
            if path == "/admin/webhooks/log":
                limit = int(query.get("limit", "100"))
                if not 1 <= limit <= 10_000:
                    raise WebhookError("limit must be 1..10000")
                return Answer(orjson.dumps(store.read_log(query.get("id"), limit)))
            if path == "/admin/webhooks" and request.method != "POST":
                return Answer(orjson.dumps([public_view(s) for s in store.list()]))
            if path == "/admin/webhooks":
                for name in ("endpoint", "assets"):
                    if not query.get(name):
                        raise WebhookError(f"{name} is required")
                sub = store.add(query["endpoint"], query.get("tier", "starter"),
                                query["assets"].split(","), style=query.get("style", "standard"),
                                label=query.get("label", ""))
                answer = {"id": sub["id"], "secret": sub["secrets"][0]}
            else:
                sub_id = query.get("id")
                if not sub_id:
                    raise WebhookError("id is required")
                answer = {"id": sub_id}
                if path.endswith("/pause"):
                    store.set_state(sub_id, "paused", only_from=("active",))
                elif path.endswith("/resume"):
                    store.set_state(sub_id, "active", only_from=("paused", "disabled"))
                elif path.endswith("/remove"):
                    store.remove(sub_id)
                else:
                    answer["secret"] = store.rotate_secret(sub_id)
        except (WebhookError, ValueError) as exc:
            return Answer({"error": "bad_request", "detail": str(exc)}, status=400)
        self.webhooks.reload_now()
        return Answer(answer)


    async def _key_change(self, query: dict[str, list[str]]) -> Answer:
        """POST /admin/keys?op=add|revoke|tier&key=K[&tier=T]: with --redis the
        change goes to the shared store and every node (this one included)
        applies it from pub/sub; alone, to the local store and table."""
        op, key, tier = (query.get(name, [None])[0] for name in ("op", "key", "tier"))
        if self.store is None or self.api_keys is None:
            return Answer({"error": "bad_request", "detail": "keys are off (no --keystore)"},
                          status=400)
        if op not in ("add", "revoke", "tier") or not key or (op != "revoke" and not tier):
            return Answer({"error": "bad_request",
                           "detail": "op=add|revoke|tier and key=K (and tier=T but for revoke)"},
                          status=400)
        if tier is not None and tier not in self.store.tiers:
            return Answer({"error": "bad_request", "detail": f"unknown tier {tier!r}"},
                          status=400)
        if self.cluster is not None:
            nodes = await self.cluster.publish_key(op, key, tier)
            if nodes is None:
                return Answer({"error": "unavailable", "detail": "redis unreachable"},
                              status=503)
            return Answer({"op": op, "key": key, "scope": "cluster", "nodes_notified": nodes})
        from beastnet.serve.cluster import apply_key_change
        apply_key_change(self.api_keys, self.store, op, key, tier)
        return Answer({"op": op, "key": key, "scope": "node"})

    async def _cluster_stats(self) -> Answer:
        if self.cluster is None:
            return Answer({"error": "not_found", "detail": "this server runs alone: start it "
                                                           "with --redis URL"}, status=404)
        return Answer(orjson.dumps(await self.cluster.cluster_stats(), default=str))

    async def _cluster_profile(self, name: str) -> Answer:
        """Publish a profile switch; every node (this one too) applies it on receipt."""
        if self.cluster is None:
            return Answer({"error": "bad_request",
                           "detail": "scope=cluster needs --redis"}, status=400)
        try:
            apply_live(self.cfg, name)          # refuse an unknown profile here, not on each node
        except ValueError as exc:
            return Answer({"error": "bad_request", "detail": str(exc)}, status=400)
        nodes = await self.cluster.publish_profile(name)
        if nodes is None:
            return Answer({"error": "unavailable", "detail": "redis unreachable"}, status=503)
        return Answer({"profile": name, "scope": "cluster", "nodes_notified": nodes})


def dashboard_page(stream_path: Optional[str], prefix: str = "/v1/",
                   stream_tiers: Optional[list[str]] = None) -> bytes:
    """The live page, with the stream's path and the assets filled in (None:
    the stream is off, and the page says so).  `stream_tiers`: the API-key
    tiers that may stream, None when keys are not enforced; with `prefix`
    the page tells a person why the stream refused them."""
    page = (importlib.resources.files("beastnet.serve") / "dashboard.html").read_bytes()
    config = orjson.dumps({"path": stream_path, "assets": list(ASSETS), "health": HEALTH_TOPIC,
                           "prefix": prefix, "stream_tiers": stream_tiers})
    start, end = page.index(b"/*CONFIG*/"), page.index(b"/*END*/")
    return page[:start] + config + page[end + len(b"/*END*/"):]

"""The bundled price server: `beastnet serve`.

One `ResponseTable` of 150 assets, fed by a simulated or replayed feed and
served over UDP and HTTP by the native engines; API keys and usage from the
SQLite key store; telemetry, Prometheus metrics and admin routes on the HTTP
port's control plane.  Built only on the public API.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any, Optional
from urllib.parse import parse_qs

import orjson

from beastnet import (Answer, APIKeyTable, ControlPlane, HTTPServer, MissRequest, ResponseTable,
                      ServerError, UDPServer, is_loopback_client)
from beastnet.metrics import (CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricFamily, http_families,
                              render, udp_families)
from beastnet.serve.assets import ASSETS
from beastnet.serve.config import LIVE_PARAMETERS, ServeConfig, apply_live
from beastnet.serve.feeds import Feed, PricePublisher, ReplayFeed, SimulatedFeed
from beastnet.serve.keys import KeyStore, UsageFlusher, configured_tiers
from beastnet.serve.metrics import feed_families, key_families

__all__ = ["PortInUseError", "PriceService", "check_port_free"]

log = logging.getLogger("beastnet.serve.service")

# Routes the control plane answers; any other /admin/ path is a 404 (403 off loopback).
ROUTES = ("/healthz", "/metrics", "/admin/stats", "/admin/reset", "/admin/profile")


class PortInUseError(ServerError):
    """Another socket already holds the address a server is to bind."""

    def __init__(self, message: str, protocol: str) -> None:
        super().__init__(message)
        self.protocol = protocol        #: "UDP" or "HTTP"


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
        self.api_keys: Optional[APIKeyTable] = None
        self.store: Optional[KeyStore] = None
        self.flusher: Optional[UsageFlusher] = None
        self.publisher = PricePublisher(self.table, ASSETS, stale_after_s=cfg.feed_stale_after_s,
                                        source_priority=cfg.feed_sources)
        self.feed = feed or self._make_feed()
        self.control = ControlPlane("beastnet-service")
        self.udp: Optional[UDPServer] = None
        self.http: Optional[HTTPServer] = None
        self.active_keys = 0                    # active keys in the store at start
        self._feed_task: Optional[asyncio.Future] = None
        self._sampler_task: Optional[asyncio.Future] = None
        self._udp_rates = _RateSampler()
        self._http_rates = _RateSampler()
        self._baseline: dict[str, dict[str, int]] = {}
        self._stopped = threading.Event()
        self.started_at = 0.0

    def _make_feed(self) -> Feed:
        cfg = self.cfg
        if cfg.feed == "replay":
            assert cfg.feed_path is not None
            return ReplayFeed(cfg.feed_path, speed=cfg.replay_speed)
        return SimulatedFeed(ASSETS, sources=cfg.feed_sources, rounds_per_s=cfg.feed_rounds_per_s)

    # -- lifecycle -----------------------------------------------------------------

    def start(self, warmup_timeout_s: float = 5.0) -> "PriceService":
        cfg = self.cfg
        logging.getLogger("beastnet").setLevel(cfg.log_level.upper())
        try:
            if not cfg.share_ports:
                check_port_free(cfg.udp_host, cfg.udp_port, socket.SOCK_DGRAM, "UDP")
                check_port_free(cfg.http_host, cfg.http_port, socket.SOCK_STREAM, "HTTP")
            if cfg.keystore:
                self._open_key_store(cfg.keystore)
            self.control.start()
            self._feed_task = self.control.run(
                lambda: asyncio.ensure_future(self.publisher.run(self.feed)))
            self._sampler_task = self.control.run(lambda: asyncio.ensure_future(self._sample()))
            self._wait_for_prices(warmup_timeout_s)
            self.udp = UDPServer(self.table, cfg.udp_host, cfg.udp_port, sockets=cfg.udp_sockets,
                                 batch=cfg.batch, max_datagram=cfg.max_datagram,
                                 recv_buffer_bytes=cfg.recv_buffer_bytes,
                                 send_buffer_bytes=cfg.send_buffer_bytes,
                                 cpu_steering=cfg.cpu_steering, api_keys=self.api_keys,
                                 control=self.control).start()
            self.http = self._start_http()
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

    def _start_http(self) -> HTTPServer:
        cfg = self.cfg
        routes = {path: self._on_route for path in ROUTES}
        return HTTPServer(self.table, cfg.http_host, cfg.http_port, threads=cfg.http_threads,
                          backlog=cfg.backlog, prefix=cfg.http_prefix, routes=routes,
                          miss_queue_size=cfg.miss_queue_size, max_inflight=cfg.max_inflight,
                          max_connections=cfg.max_connections, idle_timeout_s=cfg.idle_timeout_s,
                          header_timeout_s=cfg.header_timeout_s, api_keys=self.api_keys,
                          control=self.control).start()

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
        for task in (self._feed_task, self._sampler_task):
            if task is not None:
                self.control.call_soon(task.cancel)
        self.control.stop()
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
        """Run until SIGTERM or SIGINT, then drain and return 0."""
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            signum = signal.sigwait(signals)
            log.info("%s: draining", signal.Signals(signum).name)
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
            await asyncio.sleep(1.0)

    def _since_reset(self, name: str, totals: dict[str, int]) -> dict[str, int]:
        base = self._baseline.get(name, {})
        return {k: v - base.get(k, 0) if isinstance(v, int) else v for k, v in totals.items()}

    def stats(self) -> dict[str, Any]:
        """Everything /admin/stats shows."""
        out: dict[str, Any] = {"uptime_s": round(time.monotonic() - self.started_at, 3),
                               "profile": self.cfg.profile, "assets": len(self.table)}
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
        out["feed"] = self.publisher.health()
        if self.api_keys is not None and self.flusher is not None:
            usage = self.api_keys.usage()
            out["api_keys"] = {"keys": len(usage), "flushes": self.flusher.flushes,
                               "flush_errors": self.flusher.flush_errors,
                               "admitted": sum(v[0] for v in usage.values()),
                               "rate_limited": sum(v[1] for v in usage.values()),
                               "over_quota": sum(v[2] for v in usage.values())}
        out["live_parameters"] = {name: getattr(self.cfg, name) for name in sorted(LIVE_PARAMETERS)}
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
        families.append(MetricFamily("beastnet_uptime_seconds", "gauge", "Seconds since start.")
                        .add(round(time.monotonic() - self.started_at, 3)))
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

    def _authorized(self, request: MissRequest) -> bool:
        """Admin routes: loopback clients only, unless `admin_remote`; with an
        `admin_token`, the token must come too (X-API-Key header or ?token=)."""
        loopback = is_loopback_client(request)
        token = self.cfg.admin_token
        if token is None:
            return loopback
        sent = request.api_key or parse_qs(request.query or "").get("token", [""])[0]
        if not secrets.compare_digest(sent.encode(), token.encode()):
            return False
        return loopback or self.cfg.admin_remote

    def _on_route(self, request: MissRequest) -> Any:
        path = request.path or ""
        if path == "/healthz":
            stale = len(self.publisher.stale_assets)
            ok = len(self.table) > 0 and stale < len(ASSETS)
            return Answer({"status": "ok" if ok else "degraded", "assets": len(self.table),
                           "stale_assets": stale}, status=200 if ok else 503)
        if not self._authorized(request):
            return Answer({"error": "forbidden"}, status=403)
        if path == "/metrics":
            return Answer(self.metrics(), content_type=METRICS_CONTENT_TYPE)
        if path == "/admin/stats":
            return Answer(orjson.dumps(self.stats(), default=str))
        if path == "/admin/reset":
            if request.method != "POST":
                return Answer({"error": "method_not_allowed"}, status=405)
            self.reset()
            return Answer({"reset": True})
        if path == "/admin/profile":
            name = parse_qs(request.query or "").get("name", [None])[0]
            if request.method == "GET" or name is None:
                return Answer({"profile": self.cfg.profile,
                               "live": {k: getattr(self.cfg, k) for k in sorted(LIVE_PARAMETERS)}})
            if request.method != "POST":
                return Answer({"error": "method_not_allowed"}, status=405)
            try:
                changes = self.switch_profile(name)
            except ValueError as exc:
                return Answer({"error": "bad_request", "detail": str(exc)}, status=400)
            return Answer({"profile": name, "changed": changes})
        return Answer({"error": "not_found"}, status=404)

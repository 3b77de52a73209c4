"""The native engines of `beastnet serve` as a component: the UDP server,
the public HTTP server (prices, the stream, the live page) and the admin
listener, with their per-second rates and /admin/reset."""
from __future__ import annotations

import asyncio
import errno
import importlib.resources
import logging
import os
import resource
import socket
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional

import orjson

from beastnet import (Answer, HTTPServer, MissRequest, ResponseTable, ServerError, TLSConfig,
                      TLSConfigError, UDPServer, WebSocketOptions, error_answer)
from beastnet.counters import HTTP_COUNTERS, tagged
from beastnet.metrics import MetricFamily, http_families, udp_families
from beastnet.serve.admin import AdminRoute
from beastnet.serve.assets import ASSET_LIST_KEY, ASSETS, BATCH_KEY
from beastnet.serve.component import Component
from beastnet.serve.keys import configured_tiers

if TYPE_CHECKING:
    from beastnet.serve.config import ServeConfig
    from beastnet.serve.service import PriceService

__all__ = ["DASHBOARD_ROUTES", "HEALTH_TOPIC", "Engines", "PortInUseError", "check_ports",
           "dashboard_page"]

log = logging.getLogger("beastnet.serve.engines")

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


# The admin listener's counters /admin/stats shows (its own requests).
ADMIN_TOTALS = tagged(HTTP_COUNTERS, "admin")


class PortInUseError(ServerError):
    """Other sockets already hold addresses the servers are to bind."""

    def __init__(self, message: str, protocols: list[str]) -> None:
        super().__init__(message)
        self.protocols = protocols      #: of "UDP", "HTTP", "admin": every port in use


def _port_in_use(host: str, port: int, socktype: int, what: str) -> bool:
    """Whether another process holds `host`:`port`.

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
        return False
    with socket.socket(family, socktype) as probe:
        if socktype == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
    return False


def check_ports(cfg: "ServeConfig") -> None:
    """Raise PortInUseError naming every port of the three listeners that
    another process holds (all of them at once, so one retry is enough)."""
    busy = [(what, host, port) for what, host, port, socktype in (
        ("UDP", cfg.udp_host, cfg.udp_port, socket.SOCK_DGRAM),
        ("HTTP", cfg.http_host, cfg.http_port, socket.SOCK_STREAM),
        ("admin", cfg.admin_host, cfg.admin_port, socket.SOCK_STREAM))
        if _port_in_use(host, port, socktype, what)]
    if busy:
        ports = ", ".join(f"{what} port {port} on {host}" for what, host, port in busy)
        raise PortInUseError(f"in use by another process: {ports}", [b[0] for b in busy])


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


class Engines(Component):
    """UDP, public HTTP and the admin listener, on the service's control plane.
    Started after the parts the engines need (the key table), so they serve
    from their first request with everything in place."""

    name = "engines"

    def __init__(self, host: "PriceService") -> None:
        self.host = host
        self.cfg = host.cfg
        self._udp_rates = _RateSampler()
        self._http_rates = _RateSampler()
        self._baseline: dict[str, dict[str, int]] = {}
        self._dashboard: Optional[Answer] = None
        self._sampler: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        # A server's start attaches its dispatcher by a call on the control
        # loop and waits for it: from a worker thread, never from the loop.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._start_servers)
        self._sampler = loop.create_task(self._sample())

    def _start_servers(self) -> None:
        host, cfg = self.host, self.cfg
        self._fit_open_files()
        # The readers' arrays hold the governor's largest batch from the
        # start, so its UDP-drop reaction can grow the batch live.
        host.udp = UDPServer(host.table, cfg.udp_host, cfg.udp_port, sockets=cfg.udp_sockets,
                             batch=cfg.batch, batch_capacity=cfg.adaptive_max_batch,
                             max_datagram=cfg.max_datagram,
                             recv_buffer_bytes=cfg.recv_buffer_bytes,
                             send_buffer_bytes=cfg.send_buffer_bytes,
                             cpu_steering=cfg.cpu_steering, api_keys=host.api_keys,
                             control=host.control, reuse_port=cfg.share_ports,
                             control_stall_s=cfg.control_stall_s).start()
        host.table.set_json(ASSET_LIST_KEY, {"assets": list(ASSETS)})     # GET /v1/assets
        host.admin = self._start_admin()
        host.http = self._start_http()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()

    def stop_serving(self, grace_s: Optional[float]) -> None:
        """Drain: stop accepting, finish in-flight HTTP (called from the
        service's thread before the control loop's parts stop)."""
        host = self.host
        if host.http is not None:
            host.http.stop(grace_s)
        if host.udp is not None:
            host.udp.stop()
        if host.admin is not None:
            host.admin.stop(0.0)

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
        cfg, routes = self.cfg, self.host.routes
        return HTTPServer(ResponseTable(capacity=16), cfg.admin_host, cfg.admin_port, threads=1,
                          backlog=min(cfg.backlog, 128),
                          routes={path: routes.on_admin for path in routes.paths()},
                          max_connections=cfg.admin_max_connections,
                          idle_timeout_s=cfg.idle_timeout_s,
                          header_timeout_s=cfg.header_timeout_s,
                          control=self.host.control, reuse_port=cfg.share_ports,
                          control_stall_s=cfg.control_stall_s).start()

    def _start_http(self) -> HTTPServer:
        cfg, host = self.cfg, self.host
        # Every admin path is routed here too, to answer 404 (not the engine's
        # 403 for /admin/ off loopback): the public port gives nothing away.
        routes: dict[str, Any] = {path: host.routes.on_public for path in host.routes.paths()}
        if cfg.dashboard:
            tiers = configured_tiers(cfg.tiers).values() if cfg.keystore or cfg.database \
                else None
            page = dashboard_page(cfg.stream_path if cfg.stream else None, cfg.http_prefix,
                                  None if tiers is None else [t.name for t in tiers if t.stream])
            self._dashboard = Answer(page, content_type="text/html; charset=utf-8")
            routes.update({path: self._on_dashboard for path in DASHBOARD_ROUTES})
        reports: Any = host.component("reports")     # misses under the prefix: its reports
        stream = WebSocketOptions(path=cfg.stream_path,
                                  compress_min_bytes=cfg.stream_compress_min_bytes) \
            if cfg.stream else None
        tls = TLSConfig(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
        return HTTPServer(host.table, cfg.http_host, cfg.http_port, threads=cfg.http_threads,
                          io=cfg.http_io,
                          backlog=cfg.backlog, prefix=cfg.http_prefix, routes=routes,
                          miss_queue_size=cfg.miss_queue_size, max_inflight=cfg.max_inflight,
                          max_connections=cfg.max_connections, idle_timeout_s=cfg.idle_timeout_s,
                          header_timeout_s=cfg.header_timeout_s, api_keys=host.api_keys,
                          control=host.control, websocket=stream, tls=tls,
                          reuse_port=cfg.share_ports, cors_origins=cfg.cors_origins,
                          batch_key=BATCH_KEY, control_stall_s=cfg.control_stall_s,
                          handler=reports.on_public if reports is not None else None,
                          miss_prefix=reports.miss_prefix if reports is not None else None,
                          keyed_replies=(reports is not None and host.api_keys is not None
                                         and cfg.report_max_age_s > 0)
                          ).start()

    def _on_dashboard(self, request: MissRequest) -> Answer:
        if request.method not in ("GET", "HEAD"):
            return error_answer("method_not_allowed", allow="GET, HEAD")
        assert self._dashboard is not None
        return self._dashboard

    def reload_tls(self) -> bool:
        """SIGHUP: read the public port's certificate and key again.  New
        connections get them; open ones keep theirs; a bad file is logged and
        the old certificate stays.  True when reloaded."""
        http = self.host.http
        if http is None or http.tls is None:
            log.info("SIGHUP: no TLS certificate to reload", extra={"fields": {"event": "sighup"}})
            return False
        try:
            http.reload_tls()
        except TLSConfigError as exc:
            log.error("SIGHUP: TLS reload failed, still serving the previous certificate: %s", exc,
                      extra={"fields": {"event": "tls_reload_failed"}})
            return False
        log.info("SIGHUP: TLS certificate reloaded from %s", http.tls.cert_file,
                 extra={"fields": {"event": "tls_reloaded", "cert": http.tls.cert_file}})
        return True

    async def _sample(self) -> None:
        host = self.host
        while True:
            if host.udp is not None:
                self._udp_rates.sample(host.udp.stats()["totals"])
            if host.http is not None:
                self._http_rates.sample(host.http.stats()["totals"])
            await asyncio.sleep(1.0)

    def _since_reset(self, name: str, totals: dict[str, int]) -> dict[str, int]:
        base = self._baseline.get(name, {})
        return {k: v - base.get(k, 0) if isinstance(v, int) else v for k, v in totals.items()}

    def stats(self) -> dict[str, Any]:
        host, out = self.host, {}
        if host.udp is not None:
            udp = host.udp.stats()
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
        if host.http is not None:
            http = host.http.stats()
            out["http"] = {"address": http["address"], "threads": http["threads"],
                           "totals": self._since_reset("http", http["totals"]),
                           "rates_per_s": self._http_rates.rates,
                           "per_thread": http.get("per_thread", [])}
        if host.admin is not None:
            admin = host.admin.stats()["totals"]
            out["admin"] = {"address": host.admin.address,
                            "totals": {k: admin.get(k, 0) for k in ADMIN_TOTALS}}
        return out

    def families(self) -> list[MetricFamily]:
        out: list[MetricFamily] = []
        if self.host.udp is not None:
            out += udp_families(self.host.udp.stats())
        if self.host.http is not None:
            out += http_families(self.host.http.stats())
        return out

    def routes(self) -> list[AdminRoute]:
        return [AdminRoute("/admin/reset", ("POST",), self._on_reset)]

    def _on_reset(self, request: MissRequest) -> Answer:
        self.reset()
        return Answer({"reset": True})

    def reset(self) -> None:
        """Counters shown by /admin/stats start from zero again (native counters
        are monotonic; Prometheus keeps seeing them unchanged)."""
        if self.host.udp is not None:
            self._baseline["udp"] = dict(self.host.udp.stats()["totals"])
        if self.host.http is not None:
            self._baseline["http"] = dict(self.host.http.stats()["totals"])

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        if "max_inflight" in changes and self.host.http is not None:
            self.host.http.set_max_inflight(self.cfg.max_inflight)

    def counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals per engine (for the cluster snapshot)."""
        out: dict[str, dict[str, int]] = {}
        if self.host.udp is not None:
            out["udp"] = self.host.udp.stats()["totals"]
        if self.host.http is not None:
            out["http"] = self.host.http.stats()["totals"]
        return out

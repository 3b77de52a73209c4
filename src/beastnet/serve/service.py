"""The bundled price server: `beastnet serve`.

One `ResponseTable` of 150 assets, fed by a simulated or replayed feed and
served over UDP and HTTP by the native engines; API keys and usage from the
key store; telemetry, Prometheus metrics and admin routes on an admin
listener of their own (loopback by default), apart from the public HTTP port.
Built only on the public API.

`PriceService` composes components (`serve/component.py`) and knows none of
them: `COMPONENTS` lists them in start order, each built from the config
(None when the config leaves it out).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import threading
import time
from typing import Any, Callable, Coroutine, Optional

import orjson

from beastnet import (Answer, APIKeyTable, BeastnetError, ControlPlane, HTTPServer, MissRequest,
                      ResponseTable, ServerError, StartStop, UDPServer, error_answer)
from beastnet.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricFamily, render
from beastnet.serve.admin import AdminRoute, AdminRoutes, query_args
from beastnet.serve.assets import ASSET_LIST_KEY, ASSETS
from beastnet.serve.component import Component
from beastnet.serve.config import (LIVE_PARAMETERS, ConfigError, ServeConfig, apply_live,
                                   live_overrides)
from beastnet.serve.engines import PortInUseError, check_ports
from beastnet.serve.feeds import Feed, PricePublisher
from beastnet.serve.stores import Stores, open_stores
from beastnet.serve.systemd import notify

__all__ = ["COMPONENTS", "PortInUseError", "PriceService"]

log = logging.getLogger("beastnet.serve.service")

STOP_TIMEOUT_S = 10.0           # a component's stop() past this is abandoned (and logged)


#: The parts of the service in start order (stopped in reverse), as
#: "module:Class" (imported only when the service starts, so a part that is
#: off costs no import).  A part comes after the parts it uses: the engines
#: need the key table; the cluster leases the keys; webhooks ask the cluster
#: which node pushes what; the usage log harvests the key table; the reports
#: read the usage log, and the engines hand them the public port's misses;
#: the governor and the stream act through the engines.
COMPONENTS: tuple[str, ...] = (
    "beastnet.serve.apikeys:ApiKeys",
    "beastnet.serve.usage_log:UsageLogComponent",
    "beastnet.serve.prices:Prices",
    "beastnet.serve.cluster:Cluster",
    "beastnet.serve.deliveries:Webhooks",
    "beastnet.serve.reports:Reports",
    "beastnet.serve.engines:Engines",
    "beastnet.serve.governor:Governor",
    "beastnet.serve.stream:StreamHealth",
)


def _component_class(spec: str) -> type[Component]:
    module, _, name = spec.partition(":")
    cls: type[Component] = getattr(importlib.import_module(module), name)
    return cls


class PriceService(StartStop):
    """Everything `beastnet serve` runs, with start(), stop() and drain on SIGTERM.

    One control plane (`control`, a uvloop loop on one thread) runs the
    components, the admin routes and both servers' miss dispatchers; the
    servers are given it and never start or stop it themselves.
    """

    def __init__(self, cfg: ServeConfig, feed: Optional[Feed] = None) -> None:
        self.cfg = cfg
        # stale_marking: a stalled control loop stops the feed and the stale
        # checker alike; the engines then serve the "stale":true variants.
        self.table = ResponseTable(capacity=len(ASSETS) * 2, stale_marking=True)
        self.control = ControlPlane("beastnet-service")
        self.stores = Stores()
        self.api_keys: Optional[APIKeyTable] = None     # set by the api_keys component
        self.udp: Optional[UDPServer] = None            # set by the engines
        self.http: Optional[HTTPServer] = None
        self.admin: Optional[HTTPServer] = None         # the admin listener
        self.feed = feed                                 # None: the one the config names
        self.publisher = PricePublisher(self.table, ASSETS,
                                        stale_after_s=cfg.feed_stale_after_s,
                                        source_priority=cfg.feed_sources,
                                        max_jump=cfg.feed_max_jump)
        self.components: list[Component] = []           # the started ones, in order
        self.routes = AdminRoutes([], cfg.admin_token)
        self.start_profile = cfg.profile
        self.started_at = 0.0
        self._stopped = threading.Event()

    @property
    def active_keys(self) -> int:
        """Active keys in the native table (0 with keys off)."""
        keys: Any = self.component("api_keys")
        return keys.active_keys() if keys is not None else 0

    def component(self, name: str) -> Optional[Component]:
        """The started component called `name`, or None."""
        return next((c for c in self.components if c.name == name), None)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "PriceService":
        cfg = self.cfg
        logging.getLogger("beastnet").setLevel(cfg.log_level.upper())
        try:
            if not cfg.share_ports:
                check_ports(cfg)
            if cfg.webhooks and not (cfg.keystore or cfg.database):
                raise ServerError("webhooks need a keystore or a database (the delivery log "
                                  "lives there); drop --no-keys or give --keystore")
            self.stores = open_stores(
                cfg.keystore, tiers=_key_tiers(cfg), webhooks=cfg.webhooks,
                webhook_tiers=_webhook_tiers(cfg), assets=ASSETS,
                allow_private=cfg.webhooks_allow_private, redis=cfg.redis, parameters=True,
                database=cfg.database, database_may_be_down=True)
            self._restore_profile()
            self.control.start()
            self.components, routes = [], self._routes()
            for spec in COMPONENTS:         # built in order: a part may look up those before it
                cls = _component_class(spec)
                part = cls.build(self)
                if part is not None:
                    self.components.append(part)
                    routes += part.routes()
                else:
                    routes += [_off_route(path, cls.off_hint) for path in cls.off_paths]
            self.routes = AdminRoutes(routes, cfg.admin_token)
            for index, part in enumerate(list(self.components)):
                try:
                    self._on_loop(part.start(), timeout=30.0)
                except BaseException:
                    self.components = self.components[:index + 1]
                    raise
        except BaseException:
            self.stop()
            raise
        self.started_at = time.monotonic()
        return self

    def _on_loop(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.control.loop).result(timeout)

    def stop(self, grace_s: Optional[float] = None) -> None:
        """Drain: stop accepting, finish in-flight HTTP, then stop the
        components in reverse order (the feed, the last usage flush, the
        webhook log), then close the stores."""
        engines: Any = self.component("engines")
        if engines is not None:
            engines.stop_serving(grace_s)
        if self.control.running:
            for part in reversed(self.components):
                try:
                    self._on_loop(part.stop(), timeout=STOP_TIMEOUT_S)
                except Exception as exc:        # a stop must finish whatever a part does
                    log.warning("%s stop: %s", part.name, exc)
        self.components = []
        self.control.stop()
        self.stores.close()
        self._stopped.set()

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

    def reload_tls(self) -> bool:
        """SIGHUP: the public port's certificate read again (engines.py)."""
        engines: Any = self.component("engines")
        return engines is not None and bool(engines.reload_tls())

    # -- telemetry -----------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals for the cluster snapshot (rates come from deltas)."""
        out: dict[str, dict[str, int]] = {}
        for part in self.components:
            out.update(part.counters())
        return out

    def stats(self) -> dict[str, Any]:
        """Everything /admin/stats shows."""
        out: dict[str, Any] = {"uptime_s": round(time.monotonic() - self.started_at, 3),
                               "profile": self.cfg.profile, "profile_at_start": self.start_profile,
                               "assets": len(self.table) - (ASSET_LIST_KEY in self.table)}
        for part in self.components:
            out.update(part.stats())
        out["live_parameters"] = {name: getattr(self.cfg, name) for name in sorted(LIVE_PARAMETERS)}
        return out

    def metrics(self) -> bytes:
        families: list[MetricFamily] = [f for part in self.components for f in part.families()]
        families.append(MetricFamily("beastnet_uptime_seconds", "gauge", "Seconds since start.")
                        .add(round(time.monotonic() - self.started_at, 3)))
        return render(families)

    def switch_profile(self, name: str,
                       overrides: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """Apply profile `name`'s live parameters, then `overrides` (name ->
        text: live parameters set by hand, e.g. adaptive_enabled=true)."""
        changes = (live_overrides(self.cfg, name, overrides) if overrides
                   else apply_live(self.cfg, name))
        for key, value in changes.items():
            setattr(self.cfg, key, value)
        # What /admin/stats and /admin/profile report from now on: the live
        # parameters are `name`'s; the rest stay as started (profile_at_start).
        self.cfg.profile = name
        if "log_level" in changes:
            logging.getLogger("beastnet").setLevel(self.cfg.log_level.upper())
        for part in self.components:
            part.reconfigure(changes)
        log.info("profile %s: changed %s", name, changes)
        return changes

    def _restore_profile(self) -> None:
        """Come back to the profile last switched to (this server's, kept in
        its key store; with --redis the cluster's): its live parameters
        replace the started profile's, before any part starts."""
        store = self.stores.parameters
        try:
            name = store.profile() if store is not None else None
        except BeastnetError as exc:
            log.warning("the last profile switch is not known (%s): %s stays", exc, self.cfg.profile)
            return
        if name is None or name == self.cfg.profile:
            return
        try:
            self.switch_profile(name)
        except ConfigError as exc:
            log.warning("the last profile switch is not applied: %s", exc)

    async def _keep_profile(self, name: str) -> bool:
        """Record a switch on this server for its next start; False (and a
        warning) when the store cannot."""
        store = self.stores.parameters
        if store is None:
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(None, store.set_profile, name)
        except BeastnetError as exc:
            log.warning("profile %s: not kept for the next start: %s", name, exc)
            return False
        return True

    # -- the service's own admin routes ----------------------------------------------

    def _routes(self) -> list[AdminRoute]:
        return [AdminRoute("/metrics", ("GET", "HEAD"), self._on_metrics),
                AdminRoute("/admin/stats", ("GET", "HEAD"), self._on_stats),
                AdminRoute("/admin/profile", ("GET", "HEAD", "POST"), self._on_profile)]

    def _on_metrics(self, request: MissRequest) -> Answer:
        return Answer(self.metrics(), content_type=METRICS_CONTENT_TYPE)

    def _on_stats(self, request: MissRequest) -> Answer:
        return Answer(orjson.dumps(self.stats(), default=str))

    async def _on_profile(self, request: MissRequest) -> Answer:
        """GET: the profile in force; POST ?name=N switches it here, or on
        every node with &scope=cluster (published through Redis).  Other
        arguments set live parameters on top of N's, on this node only
        (`&adaptive_enabled=true`)."""
        query = query_args(request)
        name = query.get("name")
        overrides = {k: v for k, v in query.items() if k not in ("name", "scope")}
        if request.method != "POST" or name is None:
            return Answer({"profile": self.cfg.profile, "profile_at_start": self.start_profile,
                           "live": {k: getattr(self.cfg, k) for k in sorted(LIVE_PARAMETERS)}})
        cluster: Any = self.component("cluster")
        try:
            if query.get("scope") != "cluster":
                changed = self.switch_profile(name, overrides)
                # With --redis the kept profile is the cluster's: a node's own
                # switch lasts until it restarts.
                kept = cluster is None and await self._keep_profile(name)
                return Answer({"profile": name, "changed": changed, "kept": kept})
            if cluster is None:
                return error_answer("bad_request", "scope=cluster needs --redis")
            if overrides:
                return error_answer("bad_request", "live parameters set by hand apply to one "
                                    "node: drop scope=cluster, or name a profile that sets them")
            apply_live(self.cfg, name)      # refuse an unknown profile here, not on each node
        except ValueError as exc:
            return error_answer("bad_request", str(exc))
        return await cluster.publish_profile(name)   # type: ignore[no-any-return]


def _off_route(path: str, hint: str) -> AdminRoute:
    """A path of a part that is off: 404, saying how to turn it on."""
    return AdminRoute(path, ("GET", "HEAD", "POST"), lambda request: error_answer("not_found", hint))


def _key_tiers(cfg: ServeConfig) -> Any:
    from beastnet.serve.keys import configured_tiers
    return configured_tiers(cfg.tiers)


def _webhook_tiers(cfg: ServeConfig) -> Any:
    from beastnet.serve.webhooks import webhook_tiers
    return webhook_tiers(cfg.webhook_tiers)

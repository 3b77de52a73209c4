"""Webhook push as a component: the `WebhookPusher` (serve/push.py) on the
store's subscriptions, its stats and families, and the /admin/webhooks routes
(the `beastnet webhooks` actions over the admin listener)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import orjson

from beastnet import Answer, MissRequest, error_answer
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute, query_args
from beastnet.serve.assets import ASSETS
from beastnet.serve.component import Component
from beastnet.serve.push import PushSettings, WebhookPusher
from beastnet.serve.webhooks import WebhookError, public_view

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService
    from beastnet.serve.stores import Subscriptions

__all__ = ["Webhooks"]

log = logging.getLogger("beastnet.serve.deliveries")


class Webhooks(Component):
    """Pushes from this process, off the same table the engines serve.  With
    a cluster, subscriptions are shared in Redis and each is pushed by one
    node; registered after the cluster for that."""

    name = "webhooks"
    off_paths = ("/admin/webhooks", "/admin/webhooks/log", "/admin/webhooks/pause",
                 "/admin/webhooks/resume", "/admin/webhooks/remove",
                 "/admin/webhooks/rotate-secret")
    off_hint = "webhooks are off (--webhooks)"

    def __init__(self, host: "PriceService", store: "Subscriptions") -> None:
        self.host = host
        self.store = store
        self.pusher: Optional[WebhookPusher] = None

    @classmethod
    def build(cls, host: "PriceService") -> Optional["Webhooks"]:
        store = host.stores.webhooks
        return cls(host, store) if store is not None else None

    async def start(self) -> None:
        cluster: Any = self.host.component("cluster")
        node_id = cluster.node.node_id if cluster is not None else None
        self.pusher = WebhookPusher(self.host.table, self.store, list(ASSETS),
                                    PushSettings.from_config(self.host.cfg),
                                    node_id=node_id).start()
        listen = getattr(self.store, "listen", None)
        if listen is not None:
            try:
                listen(self.pusher.reload_now)
            except WebhookError as exc:     # the once-a-second version check still sees changes
                log.warning("webhook changes not heard by pub/sub: %s", exc)
        else:
            log.info("webhook push: %d active subscriptions", len(self.store.list("active")))

    async def stop(self) -> None:
        if self.pusher is not None:
            self.pusher.stop()                  # the log written out: a clean stop loses no row

    def stats(self) -> dict[str, Any]:
        return {"webhooks": self.pusher.stats()} if self.pusher is not None else {}

    def families(self) -> list[MetricFamily]:
        return self.pusher.families() if self.pusher is not None else []

    def routes(self) -> list[AdminRoute]:
        post = ("POST",)
        return [AdminRoute("/admin/webhooks", ("GET", "HEAD", "POST"), self._on_subscriptions),
                AdminRoute("/admin/webhooks/log", ("GET", "HEAD"), self._on_log)] + [
            AdminRoute(f"/admin/webhooks/{action}", post, self._on_change)
            for action in ("pause", "resume", "remove", "rotate-secret")]

    def _on_log(self, request: MissRequest) -> Answer:
        query = query_args(request)
        try:
            limit = int(query.get("limit", "100"))
            if not 1 <= limit <= 10_000:
                raise WebhookError("limit must be 1..10000")
            return Answer(orjson.dumps(self.store.read_log(query.get("id"), limit)))
        except (WebhookError, ValueError) as exc:
            return error_answer("bad_request", str(exc))

    def _on_subscriptions(self, request: MissRequest) -> Answer:
        if request.method != "POST":
            return Answer(orjson.dumps([public_view(s) for s in self.store.list()]))
        query = query_args(request)
        try:
            for name in ("endpoint", "assets"):
                if not query.get(name):
                    raise WebhookError(f"{name} is required")
            sub = self.store.add(query["endpoint"], query.get("tier", "starter"),
                                 query["assets"].split(","), style=query.get("style", "standard"),
                                 label=query.get("label", ""))
        except (WebhookError, ValueError) as exc:
            return error_answer("bad_request", str(exc))
        return self._changed({"id": sub["id"], "secret": sub["secrets"][0]})

    def _on_change(self, request: MissRequest) -> Answer:
        action = (request.path or "").rsplit("/", 1)[-1]
        sub_id = query_args(request).get("id")
        answer: dict[str, Any] = {"id": sub_id}
        try:
            if not sub_id:
                raise WebhookError("id is required")
            if action == "pause":
                self.store.set_state(sub_id, "paused", only_from=("active",))
            elif action == "resume":
                self.store.set_state(sub_id, "active", only_from=("paused", "disabled"))
            elif action == "remove":
                self.store.remove(sub_id)
            else:
                answer["secret"] = self.store.rotate_secret(sub_id)
        except (WebhookError, ValueError) as exc:
            return error_answer("bad_request", str(exc))
        return self._changed(answer)

    def _changed(self, answer: dict[str, Any]) -> Answer:
        assert self.pusher is not None
        self.pusher.reload_now()
        return Answer(answer)

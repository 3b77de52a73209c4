"""The one protocol every part of `beastnet serve` implements.

`PriceService` composes components and knows none of them: it starts them in
the order they are registered (`service.COMPONENTS`, built by `build()`), stops them in reverse,
merges what each `stats()` returns into /admin/stats, renders every
component's `families()` on /metrics, and puts every component's `routes()`
into the one admin route table (`serve/admin.py`).  A new part is a file with
a `Component` subclass and one line in `COMPONENTS`.

start() and stop() run on the service's control loop (`host.control`): a
component that must block (SQLite, a thread join) does it there only at
start and stop, never per request.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from beastnet.metrics import MetricFamily
    from beastnet.serve.admin import AdminRoute
    from beastnet.serve.service import PriceService

__all__ = ["Component"]


class Component:
    """A part of the service.  Every hook has a do-nothing default, so a part
    overrides only what it has."""

    #: The part's name: the key other parts find it by (`host.component(name)`).
    name = ""
    #: Admin paths of the part that, while it is off (build() gave None),
    #: answer 404 with `off_hint` saying how to turn it on.
    off_paths: tuple[str, ...] = ()
    off_hint = ""

    @classmethod
    def build(cls, host: "PriceService") -> Optional["Component"]:
        """The part for this service, or None when its config leaves it out."""
        return cls(host)

    def __init__(self, host: "PriceService") -> None:
        self.host = host        #: the service: its config, table, control loop, other parts

    async def start(self) -> None:
        """Bring the part up; raising stops the service's start (already
        started parts are stopped)."""

    async def stop(self) -> None:
        """Release what start() took; called once, also after a failed start."""

    def stats(self) -> dict[str, Any]:
        """Sections of /admin/stats (top-level keys), e.g. {"feed": {...}}."""
        return {}

    def families(self) -> list["MetricFamily"]:
        """Prometheus families for /metrics."""
        return []

    def routes(self) -> list["AdminRoute"]:
        """Admin routes this part answers."""
        return []

    def counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals by group ("udp", "keys", ...): what the cluster
        snapshot publishes (rates come from their deltas)."""
        return {}

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """Live parameters a profile switch changed (already set on the config)."""

"""The WebSocket stream's own topic: feed health, published once a second
(the live page shows it).  The prices themselves reach subscribers natively,
from the table."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional

from beastnet.serve.component import Component
from beastnet.serve.engines import HEALTH_TOPIC

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService

__all__ = ["StreamHealth"]


class StreamHealth(Component):
    """Registered after the engines: its first publication goes out at once,
    so the page subscribing first sees the feed's state without waiting."""

    name = "stream"

    @classmethod
    def build(cls, host: "PriceService") -> Optional["StreamHealth"]:
        return cls(host) if host.cfg.stream else None

    def __init__(self, host: "PriceService") -> None:
        self.host = host
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._publish())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _publish(self) -> None:
        host = self.host
        while True:
            if host.http is not None:
                host.http.publish(HEALTH_TOPIC, host.publisher.health())
            await asyncio.sleep(1.0)

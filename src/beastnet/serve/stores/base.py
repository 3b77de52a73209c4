"""The storage interfaces of `beastnet serve`: what the service and the CLI
ask of a store, whatever holds the rows.

* `Keys`: API keys with their tier and state, and a version that moves when
  any of them changes (how a server picks up the CLI's changes);
* `Usage`: admitted requests per key and month (the monthly caps);
* `Subscriptions`: webhook subscriptions and their delivery log;
* `Parameters`: the live profile (`/admin/profile`), kept so that a server
  that restarts, or a node that joins a cluster later, comes back to it.

Implementations: SQLite (`sqlite.py`, the embedded default) and Redis
(`redis.py`, subscriptions a cluster shares); a PostgreSQL one is one more
file here, opened by `open_stores`.

The calls are blocking, on purpose: the callers already run them off the
event loop (the usage flusher and the delivery log on threads of their own,
the cluster through `run_in_executor`, the CLI in its main thread), so a
driver with an asyncio API (asyncpg) runs its coroutines on a loop thread the
store owns, and no caller changes.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Protocol

from beastnet import APIKeyTable
from beastnet.serve.keys import Tier
from beastnet.serve.webhooks import WebhookTier

__all__ = ["Keys", "Parameters", "Subscriptions", "Usage"]


class Usage(Protocol):
    """Admitted requests per key and month ('YYYY-MM', UTC)."""

    def usage(self, key: str, month: Optional[str] = None) -> int: ...

    def add_usage(self, deltas: Mapping[str, int], month: str,
                  batch: Optional[tuple[str, int]] = None) -> None:
        """Add counts, all in one transaction (all or nothing).  `batch`,
        (writer, number): skipped when that writer's number is not above the
        last it applied (a retry of a flush whose COMMIT went through unseen;
        UsageLogStore.write says more)."""


class Keys(Usage, Protocol):
    """API keys, their tiers and their state (KeyStoreError on failure)."""

    path: str
    tiers: dict[str, Tier]

    def add(self, tier: str = "public", key: Optional[str] = None, label: str = "",
            prefix: Optional[str] = None) -> str:
        """A new key (or a key ID another node added, with its `prefix`);
        only its ID (`api_key_id`) and display prefix are stored."""

    def revoke(self, key: str) -> None:
        """By the key or its ID."""

    def set_tier(self, key: str, tier: str) -> None: ...

    def list(self, month: Optional[str] = None) -> List[dict]:
        """Every key: key (its ID), prefix, tier, label, created_at, revoked,
        month_count."""

    def unknown_tiers(self) -> dict[str, int]: ...

    def version(self) -> tuple[int, ...]:
        """Moves whenever a key is added, re-tiered or revoked."""

    def sync_into(self, api_keys: APIKeyTable, month: Optional[str] = None) -> int:
        """Make the native table match; the number of active keys."""

    def close(self) -> None: ...


class Subscriptions(Protocol):
    """Webhook subscriptions (WebhookError on failure), checked by
    `webhooks.SubscriptionRules`, and the delivery log."""

    tiers: dict[str, WebhookTier]
    allow_private: bool

    def add(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
            label: str = "", resolve: bool = True) -> dict[str, Any]: ...

    def get(self, sub_id: str) -> dict[str, Any]: ...

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]: ...

    def set_state(self, sub_id: str, state: str, reason: str = "",
                  only_from: Optional[tuple[str, ...]] = None) -> None: ...

    def remove(self, sub_id: str) -> None: ...

    def rotate_secret(self, sub_id: str) -> str: ...

    def drop_old_secrets(self, sub_id: str) -> None: ...

    def version(self) -> tuple: ...

    def write_log(self, rows: List[tuple]) -> None: ...

    def prune_log(self, older_than_s: float) -> int: ...

    def read_log(self, sub_id: Optional[str] = None, limit: int = 100) -> List[dict[str, Any]]: ...

    def close(self) -> None: ...


class Parameters(Protocol):
    """The profile whose live parameters are in force: the one last
    switched to (config.LIVE_PARAMETERS; the other settings stay as
    started).  A server re-applies it when it starts."""

    def profile(self) -> Optional[str]:
        """The profile last switched to; None when there was no switch."""

    def set_profile(self, name: str) -> None:
        """Record a switch to `name` (the caller checked the name)."""

    def close(self) -> None: ...

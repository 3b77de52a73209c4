"""Which node of a cluster pushes which webhook subscription (the
subscriptions themselves are in Redis: `serve/stores/redis.py`).

Each subscription is pushed by exactly one live node: the one with the
highest `sha256(node id | subscription id)` (rendezvous hashing) among the
live nodes of the cluster's registry (the `{bn}:nodes` hash, a node counting
as live while its snapshot key has not expired).  When a node joins or
leaves only the subscriptions it wins or held move; a node killed without a
goodbye loses its own within a snapshot TTL, when its snapshot expires.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Optional

from beastnet.serve.cluster import NODES, SNAPSHOT

__all__ = ["live_nodes", "owner"]


def owner(sub_id: str, nodes: Iterable[str]) -> Optional[str]:
    """The node that pushes `sub_id`: highest random weight over `nodes`
    (None if there is none).  Every node computes the same answer from the
    same list, with no coordination."""
    best, best_weight = None, b""
    for node in nodes:
        weight = hashlib.sha256(f"{node}|{sub_id}".encode()).digest()[:8]
        if best is None or weight > best_weight or weight == best_weight and node > best:
            best, best_weight = node, weight
    return best


def live_nodes(client: Any) -> list[str]:
    """The registered nodes whose snapshot has not expired, sorted; one
    pipeline (HKEYS, then EXISTS per node)."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in client.hkeys(NODES)]
    if not ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for node in ids:
            pipe.exists(SNAPSHOT + node)
        alive = pipe.execute()
    return sorted(node for node, up in zip(ids, alive) if up)



"""Webhook subscriptions shared by several `beastnet serve --webhooks --redis`
nodes on one real redis-server: the shared store, rendezvous ownership
(each subscription pushed by exactly one live node), changes heard within
a second, and a killed node's subscriptions moving to the others."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import orjson
import pytest

from beastnet.serve.assets import ASSETS
from beastnet.serve.webhooks import WebhookError, WebhookTier
from beastnet.serve.stores.redis import RedisWebhookStore
from beastnet.serve.push import TICK_SLACK_S, WebhookPusher
from beastnet.serve.webhooks_cluster import owner
from support import wait_for
from test_cluster import needs_redis, redis_server  # noqa: F401  (a fixture)
from test_serve import serve  # noqa: F401  (a fixture)
from webhook_receivers import UDPReceiver

pytestmark = [pytest.mark.timeout(120), needs_redis]

INTERVAL_S = 0.3
TIERS = {"fast": WebhookTier("fast", INTERVAL_S, 10)}
CONFIG = (f'webhooks = true\nwebhooks_allow_private = true\n'
          f'[webhook_tiers.fast]\ninterval_s = {INTERVAL_S}\nmax_assets = 10\n')
SNAPSHOTS = ("--snapshot-interval", "0.3", "--snapshot-ttl", "2")


def test_rendezvous_owner_is_stable_and_moves_little():
    nodes = ["node0", "node1", "node2"]
    subs = [f"sub_{i}" for i in range(300)]
    before = {s: owner(s, nodes) for s in subs}
    assert before == {s: owner(s, list(reversed(nodes))) for s in subs}, "order does not matter"
    counts = collections.Counter(before.values())
    assert set(counts) == set(nodes) and min(counts.values()) > 60, counts
    after = {s: owner(s, ["node0", "node2"]) for s in subs}
    moved = [s for s in subs if before[s] != after[s]]
    assert moved and all(before[s] == "node1" for s in moved), \
        "only the leaving node's subscriptions move"
    assert owner("sub_x", []) is None


def test_shared_store_round_trip(redis_server):  # noqa: F811
    with RedisWebhookStore(redis_server.url, TIERS, ASSETS, allow_private=True) as store:
        v0 = store.version()
        sub = store.add("udp://127.0.0.1:9", "fast", ["BTC", "ETH"], label="one")
        assert store.get(sub["id"]) == sub
        assert store.version() != v0
        store.set_state(sub["id"], "paused", only_from=("active",))
        with pytest.raises(WebhookError, match="is not active"):
            store.set_state(sub["id"], "paused", only_from=("active",))
        assert store.list("active") == [] and store.list("paused")[0]["id"] == sub["id"]
        new = store.rotate_secret(sub["id"])
        assert store.get(sub["id"])["secrets"] == [new] + sub["secrets"]
        store.drop_old_secrets(sub["id"])
        assert store.get(sub["id"])["secrets"] == [new]
        with pytest.raises(WebhookError, match="allows 10 assets"):
            store.add("udp://127.0.0.1:9", "fast", ASSETS[:11])
        with pytest.raises(WebhookError, match="own key store"):
            store.read_log()
        store.remove(sub["id"])
        with pytest.raises(WebhookError, match="no subscription"):
            store.remove(sub["id"])
        assert store.list() == []


def test_changes_are_heard_by_pub_sub(redis_server):  # noqa: F811
    """A change made through one client reaches a listener by pub/sub: a bare
    store has no version poll, so nothing else can call it back."""
    import threading

    from beastnet.serve.stores.redis import CHANGES_CHANNEL

    heard = threading.Event()
    with RedisWebhookStore(redis_server.url, TIERS, ASSETS, allow_private=True) as listener, \
            RedisWebhookStore(redis_server.url, TIERS, ASSETS, allow_private=True) as writer:
        listener.listen(heard.set)
        wait_for(lambda: writer.client.pubsub_numsub(CHANGES_CHANNEL)[0][1] == 1,
                 message="redis to hold the listener's subscription")
        for change in (lambda: writer.add("udp://127.0.0.1:9", "fast", ["BTC"]),
                       lambda: writer.set_state(writer.list()[0]["id"], "paused"),
                       lambda: writer.remove(writer.list()[0]["id"])):
            heard.clear()
            change()
            assert heard.wait(5.0), "the change was not heard"


def webhooks_cli(url: str, config, *args: str) -> subprocess.CompletedProcess:
    """`beastnet webhooks --redis URL`, with the nodes' config for its tiers."""
    config.write_text(CONFIG)
    return subprocess.run([sys.executable, "-m", "beastnet", "webhooks", "--redis", url,
                           "--config", str(config), *args], capture_output=True, text=True,
                          timeout=30)


def arrivals(rx: UDPReceiver, since: float = 0.0) -> dict[str, list[float]]:
    out: dict[str, list[float]] = collections.defaultdict(list)
    for at, data in list(rx.datagrams):
        if at >= since:
            out[orjson.loads(data)["asset"]].append(at)
    return out


def once_per_cycle(stamps: list[float], sub_id: str, skipped: int) -> None:
    """One datagram per cycle: each arrival (the kernel's receive stamp)
    falls at a grid point of its own, `phase + k * interval` (push.py) -- two
    owners fire at the same phase, so a duplicate lands at the grid point of
    the original -- and the arrivals fill the grid points from the first to
    the last, but for cycles the nodes counted as skipped (`skipped`: a node
    stalled past an interval skips every cycle it jumped over and counts
    each; a 0.9 s stall at load 12 jumped two).  A late datagram stays at
    its own grid point, so a stall of this busy box cannot pass for a
    duplicate."""
    phase_s = WebhookPusher.phase_s(sub_id, INTERVAL_S)
    # A pusher fires what is due within TICK_SLACK_S in one tick: up to that early.
    slots = [int((t - phase_s + TICK_SLACK_S) // INTERVAL_S) for t in stamps]
    shown = [(k - slots[0], round(t - phase_s - k * INTERVAL_S, 4))
             for t, k in zip(stamps, slots)]
    assert len(set(slots)) == len(slots), f"two datagrams in one cycle: {shown}"
    missing = slots[-1] - slots[0] + 1 - len(slots)
    assert missing <= skipped, f"{missing} cycles missing, {skipped} skipped: {shown}"


def skipped_cycles(nodes) -> int:
    """Cycles the nodes skipped (late or still busy), summed."""
    return sum(webhook_stats(n)["cycles_skipped_late"] + webhook_stats(n)["cycles_skipped_busy"]
               for n in nodes)


def steady(rx: UDPReceiver, since: float, subs: list[dict], cycles: int = 10) -> dict:
    """The arrivals since `since` once every subscription has `cycles` of
    them: the pushers' own datagrams close the window, not a sleep."""
    def enough():
        got = arrivals(rx, since)
        return got if all(len(got[s["assets"][0]]) >= cycles for s in subs) else None
    return wait_for(enough, timeout=10, interval=0.05,
                    message=f"{cycles} datagrams of each subscription")


def webhook_stats(node) -> dict:
    status, _, body = node.admin("GET", "/admin/stats")
    assert status == 200, body
    return orjson.loads(body)["webhooks"]


def agreed(nodes, live: int, owned: int) -> bool:
    """Every node sees `live` nodes and together they push at least `owned`
    subscriptions: at least, so a node pushing what it does not own shows
    in the exact per-node checks that follow, not as a wait that never ends."""
    stats = [webhook_stats(n) for n in nodes]
    return all(len(s["cluster"]["live_nodes"]) == live for s in stats) and \
        sum(s["subscriptions"] for s in stats) >= owned


def test_each_subscription_pushed_by_one_live_node(serve, redis_server, tmp_path):  # noqa: F811
    url = redis_server.url
    cli_config = tmp_path / "cli.toml"
    with UDPReceiver() as rx:
        endpoint = f"udp://127.0.0.1:{rx.port}"
        with RedisWebhookStore(url, TIERS, ASSETS, allow_private=True) as store:
            subs = [store.add(endpoint, "fast", [a]) for a in ASSETS[:4]]
        added = webhooks_cli(url, cli_config, "add", endpoint, "--tier", "fast",
                             "--assets", ASSETS[4])
        assert added.returncode == 0, added.stderr
        subs.append({"id": added.stdout.split()[0], "assets": [ASSETS[4]]})
        nodes = [serve("--keystore", str(tmp_path / f"keys-{i}.db"), "--redis", url,
                       "--node-id", f"node{i}", *SNAPSHOTS, config=CONFIG) for i in range(3)]
        wait_for(lambda: agreed(nodes, 3, 5), timeout=10, interval=0.1,
                 message="3 nodes own 5 subscriptions")
        listed = webhooks_cli(url, cli_config, "list")
        assert all(s["id"] in listed.stdout for s in subs)

        # Steady state: every subscription's datagrams come once a cycle.
        got = steady(rx, time.time(), subs)
        skipped = skipped_cycles(nodes)
        for sub in subs:
            once_per_cycle(got[sub["assets"][0]], sub["id"], skipped)
        owners = {s["id"]: owner(s["id"], ["node0", "node1", "node2"]) for s in subs}
        for i, node in enumerate(nodes):
            assert webhook_stats(node)["subscriptions"] == \
                sum(1 for o in owners.values() if o == f"node{i}")

        # Added on node0 (admin route): pushed by its owner within ~1 s + one interval.
        asset = ASSETS[5]
        t_add = time.time()
        status, _, answer = nodes[0].admin(
            "POST", f"/admin/webhooks?endpoint={endpoint}&assets={asset}&tier=fast")
        assert status == 200, answer
        new_id = json.loads(answer)["id"]
        wait_for(lambda: asset in arrivals(rx, t_add), timeout=5, interval=0.02)
        first = arrivals(rx, t_add)[asset][0]
        assert first - t_add <= 1.0 + INTERVAL_S + 0.5, first - t_add
        subs.append({"id": new_id, "assets": [asset]})

        # Paused by the CLI: every node stops it within about a second.
        paused = subs[0]
        assert webhooks_cli(url, cli_config, "pause", paused["id"]).returncode == 0
        wait_for(lambda: sum(webhook_stats(n)["subscriptions"] for n in nodes) == len(subs) - 1,
                 timeout=5, interval=0.05, message="the owner to drop the paused subscription")
        steady(rx, time.time(), subs[1:], cycles=1)      # a cycle since, for what was in flight
        t_paused = time.time()
        steady(rx, t_paused, subs[1:], cycles=3)
        assert paused["assets"][0] not in arrivals(rx, t_paused)

        # Kill the node owning the most subscriptions: they move within a snapshot TTL.
        active = subs[1:]
        live = ["node0", "node1", "node2"]
        held = collections.Counter(owner(s["id"], live) for s in active)
        victim = held.most_common(1)[0][0]
        moved = [s for s in active if owner(s["id"], live) == victim]
        rest = [n for i, n in enumerate(nodes) if f"node{i}" != victim]
        nodes[live.index(victim)].kill()
        t_kill = time.time()
        wait_for(lambda: agreed(rest, 2, len(active)), timeout=10, interval=0.1,
                 message="two nodes own every active subscription")
        took = time.time() - t_kill
        assert took <= 2.0 + 1.0 + 1.5, f"moved after {took:.1f} s (TTL 2 s)"
        t1 = time.time() + 2 * INTERVAL_S          # a cycle for the new owners to start
        got = steady(rx, t1, active)
        skipped = skipped_cycles(rest)
        for sub in active:
            once_per_cycle(got[sub["assets"][0]], sub["id"], skipped)
        assert moved, "the victim held subscriptions"


def test_redis_down_nodes_keep_pushing_what_they_own(serve, redis_server, tmp_path):  # noqa: F811
    """Redis killed: each node keeps pushing the subscriptions it owned, once
    a cycle, none dropped and none doubled, and says so in its log once, not
    at every one-second check."""
    with UDPReceiver() as rx:
        with RedisWebhookStore(redis_server.url, TIERS, ASSETS, allow_private=True) as store:
            subs = [store.add(f"udp://127.0.0.1:{rx.port}", "fast", [a]) for a in ASSETS[:4]]
        nodes = [serve("--keystore", str(tmp_path / f"keys-{i}.db"), "--redis", redis_server.url,
                       "--node-id", f"node{i}", *SNAPSHOTS, config=CONFIG) for i in range(2)]
        wait_for(lambda: agreed(nodes, 2, 4), timeout=10, interval=0.1,
                 message="2 nodes own 4 subscriptions")
        redis_server.stop()
        wait_for(lambda: all(any("webhook reload" in e.get("msg", "") for e in n.log_entries())
                             for n in nodes), timeout=10, message="every node to meet the outage")
        got = steady(rx, time.time(), subs)
        skipped = skipped_cycles(nodes)
        for sub in subs:
            once_per_cycle(got[sub["assets"][0]], sub["id"], skipped)
        assert sum(webhook_stats(n)["subscriptions"] for n in nodes) == 4
    for node in nodes:
        warned = [e for e in node.log_entries() if "webhook reload" in e.get("msg", "")]
        # Reported once (twice if the error's wording changes), not at every check.
        assert 1 <= len(warned) <= 2, warned

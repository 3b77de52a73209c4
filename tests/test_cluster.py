"""Many `beastnet serve` nodes on one real redis-server: cluster stats, the
shared limit within its bound, key changes by pub/sub, the fallback when
Redis dies and the recovery (no usage lost), cluster-wide profiles; and the
native lease the shared limit rests on."""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from beastnet import APIKeyTable, api_key_id
from beastnet.cli.stats import format_cluster
from beastnet.serve.cluster import KEY, KEYS_CHANNEL, USAGE, aggregate, red_flags
from beastnet.serve.keys import Tier, current_month
from beastnet.serve.stores.sqlite import KeyStore
from support import find_tool, free_port, requires, wait_for
from test_serve import month_count, serve  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)

REDIS_SERVER = find_tool("redis-server")
needs_redis = requires("redis-server")

TIERS = ('[tiers.public]\nqps = 100\nburst = 10\nmonthly_cap = 1000000\n'
         '[tiers.capped]\nqps = 100\nburst = 10\nmonthly_cap = 120\n')
INTERVAL = ("--snapshot-interval", "0.3", "--snapshot-ttl", "2")
PUBLIC = "public-key-0123456789"
PARTNER = "partner-key-0123456789"


class RedisServer:
    """A redis-server on a free loopback port in a temp dir, stopped by PID;
    `args` are added to its command line (`--requirepass` and the like; then
    `password` is what the fixture's own clients authenticate with)."""

    def __init__(self, tmp: Path, *args: str, password: str | None = None) -> None:
        self.dir = tmp / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        try:
            wait_for(lambda: self._pings(client), timeout=10, interval=0.05,
                     message="redis-server to answer PING")
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           password=self.password)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def usage(self, key: str) -> int:
        client = self.client()
        try:
            return int(client.hget(USAGE + current_month(), api_key_id(key)) or 0)
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def key_stores(tmp_path: Path, n: int) -> list[Path]:
    """Each node's local SQLite copy, holding the same keys."""
    first = tmp_path / "keys-0.db"
    with KeyStore(str(first)) as store:
        store.add("public", key=PUBLIC)
        store.add("partner", key=PARTNER)
    paths = [first]
    for i in range(1, n):
        paths.append(tmp_path / f"keys-{i}.db")
        shutil.copy(first, paths[-1])
    return paths


def start_nodes(serve, redis_server, dbs, *extra):  # noqa: F811
    return [serve("--keystore", str(db), "--redis", redis_server.url, "--node-id", f"node{i}",
                  *INTERVAL, *extra, config=TIERS) for i, db in enumerate(dbs)]


def present_three(text: str) -> int:
    """How many `beastnet stats --cluster` frames in `text` show three nodes
    present (live or stale) and none missing."""
    return sum(int(live) + int(stale) == 3 for live, stale in
               re.findall(r"cluster: (\d+) live, (\d+) stale, 0 missing", text))


def admin_json(node, path: str) -> dict:
    status, _, body = node.admin("GET", path)
    assert status == 200, body
    return orjson.loads(body)


def ask_all(nodes, payload: bytes, rounds: int) -> int:
    """`rounds` requests to each node in turn, one at a time; the answers served."""
    served = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(rounds):
            served += b'"asset"' in nodes[i % len(nodes)].udp_ask(payload, sock)
    return served


# -- without Redis --------------------------------------------------------------------

def test_without_redis_the_server_runs_alone(serve):  # noqa: F811
    server = serve("--no-keys")
    assert b'"asset":"BTC"' in server.udp_ask(b"BTC")
    stats = admin_json(server, "/admin/stats")
    assert "cluster" not in stats and stats["udp"]["totals"]["hits"] == 1
    status, _, body = server.admin("GET", "/admin/cluster-stats")
    assert status == 404 and b"--redis" in body
    status, _, _ = server.admin("POST", "/admin/profile?name=production&scope=cluster")
    assert status == 400
    url = f"http://127.0.0.1:{server.admin_port}"
    run = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url, "--cluster"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "404" in run.stderr and "--redis" in run.stderr
    assert server.terminate() == 0


@pytest.mark.parametrize("args, message", [
    (("--redis", "http://x"), "--redis must be a redis://"),
    (("--redis", "redis://127.0.0.1:99999"), "Port out of range"),
    (("--redis", "redis://127.0.0.1:1", "--snapshot-interval", "3", "--snapshot-ttl", "5"),
     "--snapshot-ttl (5.0 s) must exceed two snapshot intervals"),
])
def test_bad_cluster_flags_are_one_line_and_exit_2(args, message):
    run = subprocess.run([sys.executable, "-m", "beastnet", "serve", "--profile", "dev", *args],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and message in run.stderr


def test_keys_change_kept_locally_when_redis_is_unreachable(tmp_path):
    """`keys --redis` to a port nothing listens on: exit 1, one line saying
    the change is in the local store; a bad URL is exit 2 and changes nothing."""
    db = tmp_path / "k.db"
    base = [sys.executable, "-m", "beastnet", "keys", "--db", str(db)]
    run = subprocess.run([*base, "--redis", f"redis://127.0.0.1:{free_port()}/0", "add",
                          "--key", "kept-locally-0123456789"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "local store" in run.stderr.splitlines()[-1], run.stderr
    with KeyStore(str(db)) as store:
        assert [r["key"] for r in store.list()] == [api_key_id("kept-locally-0123456789")]
    run = subprocess.run([*base, "--redis", "redis://127.0.0.1:99999", "add"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "Port out of range" in run.stderr
    with KeyStore(str(db)) as store:
        assert len(store.list()) == 1


# -- the native lease ---------------------------------------------------------------

def test_lease_tokens_bound_admissions_and_report_hunger():
    keys = APIKeyTable()
    keys.set("k", qps=1e6, burst=1000)
    assert keys.admit("k")[0] == "ok"                   # not leased: the local GCRA only
    assert keys.lease("k", on=True, add=3, low=1) == 3
    assert [keys.admit("k")[0] for _ in range(4)] == ["ok", "ok", "ok", "rate_limited"]
    assert keys.hungry == 1 and keys.leases() == {"k": 0}
    assert keys.admit("k")[1] == 100_000_000            # retry after one renewal round
    keys.lease("k", on=True, add=2)
    # a request the local GCRA refuses gives its token back
    keys.set_rate("k", qps=1e-6)
    assert keys.admit("k", now_ns=1)[0] == "rate_limited" and keys.leases() == {"k": 2}
    assert keys.lease("k", on=False) == 0 and keys.leases() == {}
    keys.revoke("k")
    keys.set_rate("k", qps=10)                          # never un-revokes
    assert keys.admit("k")[0] == "unauthorized"
    with pytest.raises(KeyError):
        keys.lease("nope", on=True)


def test_racing_threads_take_exactly_the_lease():
    from beastnet._core import admit_race
    keys = APIKeyTable()
    keys.set("k", qps=0)
    keys.lease("k", on=True, add=1000)
    verdicts = admit_race(keys, "k", 4, 1000, 1)
    assert verdicts["ok"] == 1000 and verdicts["rate_limited"] == 3000


def test_aggregate_flags_stale_missing_and_red_nodes():
    snap = {"counters": {"udp_rx_packets": 1000, "udp_kernel_drops": 20, "udp_misses": 10,
                         "udp_queue_drops": 0, "usage_flush_errors": 0},
            "rates_per_s": {"udp_rx_packets": 50.0}, "profile": "dev", "mode": "redis",
            "interval_s": 3.0}
    raw = [b"a", orjson.dumps(snap), 29_000, b"b", orjson.dumps(snap), 20_000, b"c", None, -2]
    out = aggregate(raw, 3.0, 30.0)
    assert out["nodes"] == {"live": 1, "stale": 1, "missing": 1}
    assert out["totals"]["udp_rx_packets"] == 2000 and out["rates_per_s"]["udp_rx_packets"] == 100
    assert out["flags"]["red"] == ["udp_drop_pct"]      # 20 / 1020 = 1.96 %
    assert red_flags({"usage_flush_errors": 1, "udp_misses": 100,
                      "http_queue_drops": 6})["red"] == ["background_drop_pct",
                                                          "usage_flush_errors"]
    table = format_cluster(out)
    assert "1 live, 1 stale, 1 missing" in table and "MISSING!" in table
    assert "1.961!" in table and "red flags: UDP drop % > 1" in table


# -- three nodes on one Redis --------------------------------------------------------

@needs_redis
def test_cluster_totals_equal_the_sum_of_the_nodes(serve, redis_server, tmp_path):  # noqa: F811
    nodes = start_nodes(serve, redis_server, key_stores(tmp_path, 3))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, node in enumerate(nodes):
            for _ in range(10 * (i + 1)):
                assert b'"asset"' in node.udp_ask(f"BTC {PARTNER}".encode(), sock)
    own = [admin_json(n, "/admin/stats")["udp"]["totals"]["hits"] for n in nodes]
    assert own == [10, 20, 30]

    def settled():
        # Every node's own snapshot carries its hits: what the aggregate is
        # made of, whether or not it sums them right.  All three live in the
        # same reply: one node's snapshot late past two 0.3 s intervals on
        # this busy box reads stale for a moment (live 2, stale 1, seen once).
        stats = admin_json(nodes[1], "/admin/cluster-stats")
        rows = {row["node"]: row for row in stats["per_node"]}
        hits = [rows.get(f"node{i}", {}).get("counters", {}).get("udp_hits") for i in range(3)]
        return stats if hits == own and stats["nodes"]["live"] == 3 else None
    stats = wait_for(settled, timeout=10, interval=0.1,
                     message="a reply with three live snapshots carrying every hit")
    assert stats["nodes"] == {"live": 3, "stale": 0, "missing": 0}
    rows = {row["node"]: row for row in stats["per_node"]}
    assert stats["totals"]["udp_hits"] == 60
    for name, total in stats["totals"].items():
        assert total == sum(row["counters"][name] for row in rows.values()), name
    assert all(row["profile"] == "dev" and row["mode"] == "redis" for row in rows.values())
    url = f"http://127.0.0.1:{nodes[0].admin_port}"
    table = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url, "--cluster"],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    # Three nodes present: live, or stale when this busy box delayed a
    # snapshot past two 0.3 s intervals (1 live, 2 stale at load 8).
    assert present_three(table.stdout) and "node2" in table.stdout, table.stdout
    # Unbuffered, so each frame is read as it is printed: stopped after the
    # second, not after a sleep that hopes for two.
    watch = subprocess.Popen([sys.executable, "-m", "beastnet", "stats", "--url", url,
                              "--cluster", "--watch", "0.2"], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert watch.stdout is not None
    shown = ""
    while present_three(shown) < 2:
        line = watch.stdout.readline()
        if not line:
            break
        shown += line
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=10)
    assert watch.returncode == 0 and present_three(shown + out) >= 2, shown + out
    # a node that stops cleanly leaves; one killed goes missing once its TTL runs out
    assert nodes[2].terminate() == 0
    nodes[1].kill()

    def states() -> dict[str, str]:
        stats = admin_json(nodes[0], "/admin/cluster-stats")
        return {row["node"]: row["state"] for row in stats["per_node"]}
    # Read until the killed node is missing while the survivor is present:
    # the survivor is live, or stale when this busy box starved its snapshot
    # past two intervals, and was once seen missing too (a 4-worker run at
    # load 7.5: the whole process starved past the 2 s TTL, then writing
    # again 0.3 s later); the states are checked in that reply.
    seen = wait_for(lambda: (lambda s: s if s.get("node1") == "missing"
                             and s.get("node0") != "missing" else None)(states()),
                    timeout=6, interval=0.2, message="the killed node missing, the survivor not")
    assert "node2" not in seen, f"the node stopped cleanly is still listed: {seen}"
    assert seen.get("node0") in ("live", "stale") and len(seen) == 2, seen


# needs_core: the client drains every reply of a full-rate hammer, and a
# busy machine overflows its socket buffer (a reply lost: the wait fails)
@pytest.mark.needs_core
@needs_redis
def test_shared_limit_holds_within_epsilon(serve, redis_server, tmp_path):  # noqa: F811
    """One public key (100 req/s, burst 10) hammered through three nodes: the
    cluster admits at most limit x W + burst + N x s, s = 100 x 0.1 s."""
    nodes = start_nodes(serve, redis_server, key_stores(tmp_path, 3))
    served, limited, window = hammer(nodes, f"BTC {PUBLIC}".encode(), 3.0)
    slice_ = math.ceil(100 * 0.1)
    most = 100 * window + 10 + 3 * slice_
    assert limited > served, (served, limited)
    # each node alone would let the key through at its full limit: ~3x
    assert 0.8 * 100 * window <= served <= most, (served, most, window)
    per_node = [admin_json(n, "/admin/stats")["api_keys"]["admitted"] for n in nodes]
    assert sum(per_node) == served and min(per_node) > 0, per_node


def hammer(nodes, payload: bytes, seconds: float) -> tuple[int, int, float]:
    """Send `payload` to every node as fast as they take it for `seconds`:
    (served, refused, the window from the first send to the last reply)."""
    socks = []
    for node in nodes:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(node.udp)
        sock.setblocking(False)
        socks.append(sock)
    served = refused = 0

    def drain() -> None:
        nonlocal served, refused
        for sock in socks:
            while True:
                try:
                    reply = sock.recv(4096)
                except BlockingIOError:
                    break
                served += b'"asset"' in reply
                refused += b'"asset"' not in reply
    def udp_totals() -> tuple[int, int]:
        """(requests the nodes took in or the kernel dropped, replies sent)."""
        t = [admin_json(n, "/admin/stats")["udp"]["totals"] for n in nodes]
        return (sum(x["rx_packets"] + x["kernel_drops"] for x in t),
                sum(x["tx_packets"] for x in t))

    def all_answered() -> bool:
        # Counters are bumped after the replies leave: read them, then drain.
        rx, tx = udp_totals()
        drain()
        return rx - before[0] >= sent and tx - before[1] == served + refused

    before = udp_totals()
    sent = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            for sock in socks:
                for _ in range(4):
                    try:
                        sock.send(payload)
                        sent += 1
                    except BlockingIOError:
                        pass
            time.sleep(0.001)
            drain()
        # The replies still in flight: until every one the nodes sent is in.
        wait_for(all_answered, timeout=5, interval=0.01, message="every reply the nodes sent")
    finally:
        for sock in socks:
            sock.close()
    return served, refused, time.monotonic() - started


# needs_core: the client drains every reply of a full-rate hammer, and a
# busy machine overflows its socket buffer (a reply lost: the wait fails)
@pytest.mark.needs_core
@needs_redis
def test_monthly_cap_holds_cluster_wide(serve, redis_server, tmp_path):  # noqa: F811
    """A cap of 120 through three nodes: each alone would admit 120 (360 in
    all, rate permitting); together they overshoot by at most what the
    cluster admits in one usage flush interval (100 ms at 100 req/s)."""
    dbs = key_stores(tmp_path, 3)
    for db in dbs:
        with KeyStore(str(db), {"capped": Tier("capped", 100.0, 10, 120)}) as store:
            store.add("capped", key="capped-key-0123456789")
    nodes = start_nodes(serve, redis_server, dbs)
    served, refused, _ = hammer(nodes, b"BTC capped-key-0123456789", 2.5)
    assert 120 <= served <= 120 + 100 * 0.1 + 3 * 10, (served, refused)
    over = sum(admin_json(n, "/admin/stats")["api_keys"]["over_quota"] for n in nodes)
    assert over > 0
    wait_for(lambda: redis_server.usage("capped-key-0123456789") == served, timeout=3,
             message="the cluster's usage in Redis")


@needs_redis
def test_key_changes_reach_every_node_within_a_second(serve, redis_server, tmp_path):  # noqa: F811
    dbs = key_stores(tmp_path, 3)
    nodes = start_nodes(serve, redis_server, dbs)
    header = {"X-API-Key": PUBLIC}
    assert all(n.http("GET", "/v1/BTC", header)[0] == 200 for n in nodes)
    keys_cli = [sys.executable, "-m", "beastnet", "keys", "--db", str(dbs[0]), "--redis",
                redis_server.url]
    run = subprocess.run([*keys_cli, "revoke", PUBLIC], capture_output=True, text=True,
                         timeout=30)
    announced = time.monotonic()
    assert run.returncode == 0 and "announced to 3 node(s)" in run.stderr, run.stderr
    for node in nodes:
        wait_for(lambda: node.http("GET", "/v1/BTC", header)[0] == 401,
                 timeout=max(0.05, announced + 1.0 - time.monotonic()), interval=0.02,
                 message="the revocation on every node")
    assert time.monotonic() - announced < 1.0
    # a key added on one node serves on all, and is in each local copy
    new_key = "added-later-0123456789"
    run = subprocess.run([*keys_cli, "add", "--tier", "partner", "--key", new_key],
                         capture_output=True, text=True, timeout=30)
    announced = time.monotonic()
    assert run.returncode == 0, run.stderr
    for node in nodes:
        wait_for(lambda: node.http("GET", "/v1/BTC", {"X-API-Key": new_key})[0] == 200,
                 timeout=max(0.05, announced + 1.0 - time.monotonic()), interval=0.02,
                 message="the new key on every node")
    for node in nodes:
        assert node.terminate() == 0
    for db in dbs:
        with KeyStore(str(db)) as store:
            rows = {r["key"]: r for r in store.list()}
        assert rows[api_key_id(PUBLIC)]["revoked"]
        assert rows[api_key_id(new_key)]["tier"] == "partner"
        assert rows[api_key_id(new_key)]["prefix"] == new_key[:10] + "…"
    # Redis holds key IDs, never a key: not in a record's name nor in its fields
    client = redis_server.client()
    try:
        dump = b"".join(name + b"".join(b"".join(kv) for kv in client.hgetall(name).items())
                        for name in client.scan_iter(match="*") if client.type(name) == b"hash")
    finally:
        client.close()
    assert api_key_id(new_key).encode() in dump
    assert new_key.encode() not in dump and PUBLIC.encode() not in dump
    # a node started later reads the shared store
    late = tmp_path / "late.db"
    with KeyStore(str(late)) as store:
        store.add("public", key=PUBLIC)
    node = start_nodes(serve, redis_server, [late])[0]
    wait_for(lambda: node.http("GET", "/v1/BTC", header)[0] == 401, timeout=3,
             message="the late node to learn the revocation")
    assert node.http("GET", "/v1/BTC", {"X-API-Key": new_key})[0] == 200


@needs_redis
def test_a_node_joining_with_an_empty_store_serves_the_cluster_keys_at_once(
        serve, redis_server, tmp_path):  # noqa: F811
    """The shared keys are read before the node serves: its ready line counts
    them, no "no API keys yet" warning, and its first request is admitted."""
    first = start_nodes(serve, redis_server, key_stores(tmp_path, 1))[0]
    run = subprocess.run([sys.executable, "-m", "beastnet", "keys", "--db",
                          str(tmp_path / "keys-0.db"), "--redis", redis_server.url, "add",
                          "--tier", "partner", "--key", "shared-key-0123456789"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    empty = tmp_path / "empty.db"
    second = serve("--keystore", str(empty), "--redis", redis_server.url, "--node-id", "late",
                   *INTERVAL, config=TIERS)
    assert second.http("GET", "/v1/BTC", {"X-API-Key": "shared-key-0123456789"})[0] == 200
    assert not [e for e in second.log_entries() if e.get("event") == "no_keys"]
    assert "no API keys yet" not in second.output()
    assert second.terminate() == 0 and first.terminate() == 0


@needs_redis
def test_redis_outage_falls_back_keeps_serving_and_loses_no_usage(
        serve, redis_server, tmp_path):  # noqa: F811
    dbs = key_stores(tmp_path, 3)
    nodes = start_nodes(serve, redis_server, dbs)
    payload = f"BTC {PARTNER}".encode()
    before = ask_all(nodes, payload, 90)
    wait_for(lambda: redis_server.usage(PARTNER) == before, timeout=3,
             message="usage pushed to Redis")
    redis_server.stop()
    for node in nodes:
        wait_for(lambda: (lambda c: not c["redis_reachable"] and c["mode"] == "local-share")(
            admin_json(node, "/admin/stats")["cluster"]), timeout=3, interval=0.05,
            message="every node in the fallback")
    # still serving: the partner key unlimited, the public key at a local share
    during = ask_all(nodes, payload, 90)
    assert during == 90
    assert all(b'"asset"' in n.udp_ask(f"BTC {PUBLIC}".encode()) for n in nodes)
    during += 3
    status, _, body = nodes[0].admin("GET", "/admin/cluster-stats")
    assert status == 503 and orjson.loads(body)["error"] == "unavailable"
    shown = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--cluster", "--url",
                            f"http://127.0.0.1:{nodes[0].admin_port}"],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 1 and "503" in shown.stderr and "redis unreachable" in shown.stderr
    assert b'beastnet_cluster_redis_reachable{mode="local-share"} 0' in \
        nodes[0].admin("GET", "/metrics")[2]
    redis_server.start()                # empty: no persistence in the fixture
    for node in nodes:
        wait_for(lambda: (lambda c: c["redis_reachable"] and c["mode"] == "redis")(
            admin_json(node, "/admin/stats")["cluster"]), timeout=5, interval=0.05,
            message="every node back on Redis")
    # what was counted during the outage reached the new Redis; nothing lost
    wait_for(lambda: redis_server.usage(PARTNER) + redis_server.usage(PUBLIC) == during,
             timeout=3, message="the carried usage pushed")
    assert all(admin_json(n, "/admin/stats")["cluster"]["usage_pending"] == 0 for n in nodes)
    for node in nodes:
        assert node.terminate() == 0
    assert sum(month_count(db, PARTNER) + month_count(db, PUBLIC) for db in dbs) \
        == before + during


@needs_redis
def test_fail_closed_refuses_leased_keys_while_redis_is_down(
        serve, redis_server, tmp_path):  # noqa: F811
    node = start_nodes(serve, redis_server, key_stores(tmp_path, 1),
                       "--redis-fallback", "fail-closed")[0]
    assert b'"asset"' in node.udp_ask(f"BTC {PUBLIC}".encode())
    redis_server.stop()
    wait_for(lambda: admin_json(node, "/admin/stats")["cluster"]["mode"] == "fail-closed",
             timeout=3, message="fail-closed")
    assert b"rate_limited" in node.udp_ask(f"BTC {PUBLIC}".encode())
    assert b'"asset"' in node.udp_ask(f"BTC {PARTNER}".encode())   # no limit, never leased
    assert node.terminate() == 0


@needs_redis
def test_cluster_profile_reaches_every_node(serve, redis_server, tmp_path):  # noqa: F811
    nodes = start_nodes(serve, redis_server, key_stores(tmp_path, 3))
    status, _, body = nodes[0].admin("POST", "/admin/profile?name=nope&scope=cluster")
    assert status == 400
    status, _, body = nodes[0].admin("POST", "/admin/profile?name=production&scope=cluster")
    assert status == 200 and orjson.loads(body)["nodes_notified"] == 3
    for node in nodes:
        wait_for(lambda: admin_json(node, "/admin/stats")["profile"] == "production",
                 timeout=1, interval=0.02, message="the profile on every node")

    def reported():
        stats = admin_json(nodes[2], "/admin/cluster-stats")
        return all(r.get("profile") == "production" for r in stats["per_node"])
    wait_for(reported, timeout=3, interval=0.1, message="the profile in every snapshot")
    # key changes through an admin route: published, applied everywhere
    status, _, body = nodes[1].admin("POST", f"/admin/keys?op=revoke&key={PUBLIC}")
    assert status == 200 and orjson.loads(body)["nodes_notified"] == 3, body
    for node in nodes:
        wait_for(lambda: node.http("GET", "/v1/BTC", {"X-API-Key": PUBLIC})[0] == 401,
                 timeout=1, interval=0.02, message="the revocation on every node")
    assert nodes[0].admin("POST", "/admin/keys?op=add&key=x")[0] == 400
    # A node that starts after the switch comes up in the cluster's profile.
    shutil.copy(tmp_path / "keys-0.db", tmp_path / "keys-late.db")
    late = serve("--keystore", str(tmp_path / "keys-late.db"), "--redis", redis_server.url,
                 "--node-id", "node-late", *INTERVAL, config=TIERS)
    stats = admin_json(late, "/admin/stats")
    assert stats["profile"] == "production" and stats["profile_at_start"] == "dev"


@needs_redis
def test_a_key_record_from_before_hashing_is_applied_by_its_id(serve, redis_server,  # noqa: F811
                                                               tmp_path):
    """Redis records and messages written by a beastnet that kept keys in
    plaintext: a node applies them by the key's ID, so its store, its usage
    rows and what it pushes never hold the key."""
    old_key = "pre-hash-key-0123456789"
    client = redis_server.client()
    try:
        client.hset(KEY + old_key, mapping={"revoked": 0, "tier": "public"})
        db = key_stores(tmp_path, 1)[0]
        node = start_nodes(serve, redis_server, [db])[0]
        # known from the start (429 until the first lease: known, not refused)
        assert node.http("GET", "/v1/BTC", {"X-API-Key": old_key})[0] in (200, 429)
        wait_for(lambda: node.http("GET", "/v1/BTC", {"X-API-Key": old_key})[0] == 200,
                 timeout=3, message="the old-format key served")
        client.publish(KEYS_CHANNEL, orjson.dumps({"op": "revoke", "key": old_key}))
        wait_for(lambda: node.http("GET", "/v1/BTC", {"X-API-Key": old_key})[0] == 401,
                 timeout=3, message="the old-format revocation")
        assert node.terminate() == 0
    finally:
        client.close()
    with KeyStore(str(db)) as store:
        row = {r["key"]: r for r in store.list()}[api_key_id(old_key)]
    assert row["revoked"] and row["prefix"] == old_key[:10] + "…"
    assert old_key.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("keys-0.db*"))


def test_admin_key_route_on_a_node_alone(serve, tmp_path):  # noqa: F811
    db = key_stores(tmp_path, 1)[0]
    server = serve("--keystore", str(db), config=TIERS)
    assert server.http("GET", "/v1/BTC", {"X-API-Key": PUBLIC})[0] == 200
    status, _, body = server.admin("POST", f"/admin/keys?op=tier&key={PUBLIC}&tier=partner")
    assert status == 200 and orjson.loads(body)["scope"] == "node"
    assert server.admin("POST", f"/admin/keys?op=revoke&key={PUBLIC}")[0] == 200
    assert server.http("GET", "/v1/BTC", {"X-API-Key": PUBLIC})[0] == 401
    assert server.terminate() == 0
    with KeyStore(str(db)) as store:
        row = {r["key"]: r for r in store.list()}[api_key_id(PUBLIC)]
    assert row["revoked"] and row["tier"] == "partner"

"""The `Parameters` store: the live profile a server comes back to after a
restart (SQLite, in its key store file) and the one a cluster shares (Redis,
read by a node that starts after the switch)."""
from __future__ import annotations

import orjson
import pytest
import redis

from beastnet.serve.cluster import CONTROL_CHANNEL
from beastnet.serve.stores import open_stores
from beastnet.serve.stores.redis import RedisParameters
from test_cluster import RedisServer, needs_redis
from test_serve import serve  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)


def test_sqlite_keeps_the_last_switch_across_opens(tmp_path):
    path = str(tmp_path / "keys.db")
    with open_stores(path, keys=True, parameters=True) as stores:
        assert stores.parameters is not None and stores.parameters.profile() is None
        stores.parameters.set_profile("stress-udp-direct")
        stores.parameters.set_profile("dev")
        assert stores.keys is not None
        stores.keys.add("public", key="public-key-0123456789")     # the same file, shared
    with open_stores(path, keys=False, parameters=True) as stores:
        assert stores.parameters is not None and stores.parameters.profile() == "dev"
    with open_stores(path) as stores:                   # not asked for: not opened
        assert stores.parameters is None


def test_a_switch_outlives_the_restart(serve, tmp_path):  # noqa: F811
    db = str(tmp_path / "keys.db")
    args = ("--profile", "production", "--feed", "sim", "--keystore", db)
    server = serve(*args)
    status, _, body = server.admin("POST", "/admin/profile?name=dev", {"Content-Length": "0"})
    assert status == 200 and orjson.loads(body)["kept"] is True, body
    assert server.terminate() == 0
    again = serve(*args)
    stats = orjson.loads(again.admin("GET", "/admin/stats")[2])
    assert stats["profile"] == "dev" and stats["profile_at_start"] == "production"
    assert stats["live_parameters"]["log_level"] == "debug"
    assert again.terminate() == 0


@needs_redis
def test_redis_shares_the_profile_and_tells_the_nodes(tmp_path):
    server = RedisServer(tmp_path)
    listener = redis.Redis.from_url(server.url)
    pubsub = listener.pubsub()
    try:
        pubsub.subscribe(CONTROL_CHANNEL)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        writer, reader = RedisParameters(server.url), RedisParameters(server.url)
        assert reader.profile() is None
        writer.set_profile("dev")
        assert reader.profile() == "dev"                # what a node starting later reads
        message = pubsub.get_message(timeout=5)
        assert message is not None and orjson.loads(message["data"]) == {"op": "profile",
                                                                           "name": "dev"}
        writer.close()
        reader.close()
    finally:
        pubsub.close()
        listener.close()
        server.stop()

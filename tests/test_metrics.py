"""/metrics text must parse with prometheus_client's own parser."""
import asyncio
import socket

import pytest

from beastnet import APIKeyTable, ResponseTable, UDPServer
from beastnet.serve.feeds import PricePublisher, SimulatedFeed
from beastnet.metrics import MetricFamily, render, udp_families
from beastnet.serve.metrics import feed_families, key_families

parser = pytest.importorskip("prometheus_client.parser")


def parse(text: bytes) -> dict:
    return {fam.name: fam for fam in parser.text_string_to_metric_families(text.decode())}


@pytest.mark.timeout(20)
def test_udp_server_metrics_parse_and_match_stats():
    table = ResponseTable({"BTC": b"1"})
    with UDPServer(table, sockets=2) as server:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(2)
        for payload in (b"BTC", b"BTC", b"NOPE", b""):
            client.sendto(payload, server.address)
            client.recv(100)
        client.close()
        stats = server.stats()
    families = parse(render(udp_families(stats)))
    hits = families["beastnet_udp_hits"]
    assert hits.type == "counter"
    assert sum(s.value for s in hits.samples) == stats["totals"]["hits"] == 2
    assert {s.labels["thread"] for s in hits.samples} == {"0", "1"}
    assert sum(s.value for s in families["beastnet_udp_bad_requests"].samples) == 1
    assert families["beastnet_udp_sockets"].samples[0].value == 2


def test_feed_and_key_metrics_parse():
    table = ResponseTable()
    publisher = PricePublisher(table)
    asyncio.run(publisher.consume(SimulatedFeed(sources=("a", "b"), rounds_per_s=1000, max_rounds=2)))
    keys = APIKeyTable()
    keys.set("k1", qps=1)
    keys.set("k2")
    keys.admit("k1", 0)
    keys.admit("k1", 0)
    keys.admit("k2")
    keys.revoke("k2")
    text = render(feed_families(publisher.health()) + key_families(keys.usage(), {"k1": "public", "k2": "partner"}))
    families = parse(text)
    ticks = {s.labels["source"]: s.value for s in families["beastnet_feed_source_ticks"].samples}
    assert ticks == {"a": 300, "b": 300}
    requests = {s.labels["tier"]: s.value for s in families["beastnet_api_requests"].samples}
    assert requests == {"public": 1, "partner": 1}
    active = {s.labels["tier"]: s.value for s in families["beastnet_api_keys_active"].samples}
    assert active == {"public": 1, "partner": 0}


def test_label_values_are_escaped():
    fam = MetricFamily("x", "gauge", "help").add(1.5, name='a "quoted"\\ \nvalue')
    sample = parse(render([fam]))["x"].samples[0]
    assert sample.labels["name"] == 'a "quoted"\\ \nvalue' and sample.value == 1.5


def test_a_counter_named_with_total_is_refused():
    """render() appends _total to counters: a family named with it came out
    as beastnet_usage_log_rows_written_total_total once."""
    with pytest.raises(ValueError, match="without _total"):
        MetricFamily("beastnet_x_total", "counter", "x")
    text = render([MetricFamily("beastnet_x", "counter", "x").add(3)]).decode()
    assert "beastnet_x_total 3" in text and "_total_total" not in text


def test_key_tiers_are_read_again_only_when_the_store_changes(tmp_path):
    """A scrape reads each key's tier from the store only when the store's
    key version moved since the last read (10k keys re-read on every
    scrape cost ~70 ms)."""
    from beastnet.serve.apikeys import ApiKeys
    from beastnet.serve.keys import Tier
    from beastnet.serve.stores.sqlite import KeyStore
    tiers = {"public": Tier("public", 0.0, 1, 0), "pro": Tier("pro", 0.0, 1, 0)}
    with KeyStore(str(tmp_path / "keys.db"), tiers) as store, \
            KeyStore(str(tmp_path / "keys.db"), tiers) as elsewhere:
        for i in range(3):
            store.add("public", key=f"key-{i}-0123456789")
        component = ApiKeys(None, store)  # type: ignore[arg-type]  (families needs no host)
        store.sync_into(component.api_keys)

        def active_by_tier() -> dict:
            families = parse(render(component.families()))
            return {s.labels["tier"]: s.value
                    for s in families["beastnet_api_keys_active"].samples}
        assert active_by_tier() == {"public": 3}
        for _ in range(5):
            active_by_tier()
        assert component.tier_reads == 1
        elsewhere.set_tier("key-0-0123456789", "pro")      # another process re-tiers a key
        assert active_by_tier() == {"public": 2, "pro": 1} and component.tier_reads == 2
        active_by_tier()
        assert component.tier_reads == 2

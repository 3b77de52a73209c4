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

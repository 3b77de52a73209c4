"""The one list of counters (beastnet.counters) against the native structs,
the Prometheus output and the docs."""
import re
import socket
from pathlib import Path

import pytest

from beastnet import ResponseTable, _core
from beastnet.counters import (HTTP_COUNTERS, HTTP_SERVER_GAUGES, MISS_PATH_COUNTERS, UDP_COUNTERS,
                               UDP_SERVER_GAUGES, markdown)
from beastnet.metrics import http_families, render, udp_families

ROOT = Path(__file__).resolve().parent.parent
COUNTERS_H = ROOT / "src" / "beastnet" / "includes" / "counters.h"


def c_struct_fields(name: str) -> list[str]:
    """Field names of `typedef struct name { ... } name;` in counters.h, in order."""
    text = COUNTERS_H.read_text()
    body = re.search(r"typedef struct %s \{(.*?)\}" % name, text, re.S)
    assert body is not None, f"struct {name} not found in counters.h"
    return re.findall(r"^\s*uint64_t (\w+);", body.group(1), re.M)


@pytest.fixture
def udp_engine():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    engine = _core.UDPEngine(ResponseTable(), [sock.fileno()])     # never started
    yield engine
    engine.stop()                       # closes its duplicates of the socket
    sock.close()


@pytest.fixture
def http_engine():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    engine = _core.HTTPEngine(ResponseTable(), [sock.fileno()])
    yield engine
    engine.close()
    sock.close()


def test_udp_list_names_every_field_of_bn_counters(udp_engine):
    names = [c.name for c in UDP_COUNTERS]
    assert c_struct_fields("bn_counters") == names
    assert list(udp_engine.counters()[0]) == names          # what stats() reports


def test_http_list_names_every_field_of_bn_http_counters(http_engine):
    names = [c.name for c in HTTP_COUNTERS]
    assert c_struct_fields("bn_http_counters") == names
    assert list(http_engine.counters()[0]) == names


def test_every_counter_has_kind_unit_and_help():
    for counter in UDP_COUNTERS + HTTP_COUNTERS + MISS_PATH_COUNTERS:
        assert counter.kind in ("counter", "gauge"), counter
        assert counter.unit and counter.help.endswith("."), counter


def test_metrics_take_names_types_and_help_from_the_list(udp_engine, http_engine):
    udp = {"per_socket": udp_engine.counters(), "totals": {"handler_calls": 3}}
    http = {"per_thread": http_engine.counters(), "totals": {}}
    text = render(udp_families(udp)).decode() + render(http_families(http)).decode()
    for prefix, counters in (("beastnet_udp", UDP_COUNTERS), ("beastnet_http", HTTP_COUNTERS)):
        for c in counters:
            name = f"{prefix}_{c.name}" + ("_total" if c.kind == "counter" else "")
            assert f"# HELP {name} {c.help}\n# TYPE {name} {c.kind}\n" in text
            assert f'{name}{{thread="0"}} 0\n' in text
    assert "beastnet_udp_handler_calls_total 3\n" in text


def test_every_family_on_metrics_is_in_the_list(udp_engine, http_engine):
    totals = {c.name: 0 for c in MISS_PATH_COUNTERS}
    udp = {"per_socket": udp_engine.counters(), "totals": totals}
    http = {"per_thread": http_engine.counters(), "totals": totals}
    listed = {
        "beastnet_udp": {c.name for c in UDP_COUNTERS + MISS_PATH_COUNTERS + UDP_SERVER_GAUGES},
        "beastnet_http": {c.name for c in HTTP_COUNTERS + MISS_PATH_COUNTERS + HTTP_SERVER_GAUGES},
    }
    for prefix, families in (("beastnet_udp", udp_families(udp)),
                             ("beastnet_http", http_families(http))):
        names = {f.name[len(prefix) + 1:] for f in families}
        assert names == listed[prefix]


def test_docs_table_is_generated_from_the_list():
    assert (ROOT / "docs" / "counters.md").read_text() == markdown(), \
        "regenerate docs/counters.md as its first lines say"


def test_every_tag_names_a_consumer():
    """Tags pick the subsets other modules show (cluster snapshot, demo,
    admin totals, the load report's rates): a misspelt tag would drop a
    counter from them silently."""
    from beastnet.cli.demo import DEMO_SERVER_COUNTERS
    from beastnet.counters import tagged
    from beastnet.loadgen.serverstats import SERVER_RATES
    from beastnet.serve.cluster import SNAPSHOT_COUNTERS

    rates = {name.replace(" ", "_") for name, _ in SERVER_RATES}
    every = UDP_COUNTERS + HTTP_COUNTERS + MISS_PATH_COUNTERS
    for c in every:
        for tag in c.tags:
            assert tag in ("snapshot", "demo", "admin") or \
                tag.startswith("rate:") and tag[5:] in rates, (c.name, tag)
        assert "[" not in c.help and "]" not in c.help, c.name
    assert DEMO_SERVER_COUNTERS == tagged(UDP_COUNTERS, "demo")
    snapshot = {(group, field) for _, group, field in SNAPSHOT_COUNTERS}
    for group, counters in (("udp", UDP_COUNTERS), ("http", HTTP_COUNTERS)):
        assert {(group, n) for n in tagged(counters, "snapshot")} <= snapshot
    assert all(parts for _, parts in SERVER_RATES)

"""Hypothesis on `webhooks add` input: whatever the endpoint, tier, assets
and label, the store either accepts a valid subscription or refuses with
one WebhookError; it never raises anything else and never stores a bad one."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beastnet.serve.assets import ASSETS
from beastnet.serve.stores.sqlite import WebhookStore
from beastnet.serve.webhooks import (DEFAULT_WEBHOOK_TIERS, WebhookError, check_address,
                                     parse_endpoint)

pytestmark = pytest.mark.timeout(120)

hosts = st.one_of(st.sampled_from(["127.0.0.1", "10.0.0.1", "[::1]", "localhost", "8.8.8.8",
                                   "[fe80::1]", "0.0.0.0", "example.invalid", ""]),
                  st.text(min_size=0, max_size=12))
ports = st.one_of(st.none(), st.integers(-1, 70_000).map(str), st.text(max_size=4))
endpoints = st.one_of(
    st.builds(lambda scheme, host, port, path: f"{scheme}{host}{'' if port is None else ':' + port}"
              f"{path}", st.sampled_from(["https://", "udp://", "http://", "", "ftp://"]), hosts,
              ports, st.sampled_from(["", "/hook", "/a?b=c", "/#x", "/ x"])),
    st.text(max_size=40))
assets = st.lists(st.one_of(st.sampled_from(ASSETS[:20]), st.text(max_size=6)), max_size=12)
tiers = st.one_of(st.sampled_from(list(DEFAULT_WEBHOOK_TIERS)), st.text(max_size=8))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "keys.db"
    with WebhookStore(str(path), DEFAULT_WEBHOOK_TIERS, ASSETS, allow_private=True) as s:
        yield s


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=endpoints, tier=tiers, chosen=assets, label=st.text(max_size=20))
def test_add_accepts_valid_or_refuses_with_one_error(store, endpoint, tier, chosen, label):
    before = len(store.list())
    try:
        sub = store.add(endpoint, tier, chosen, label=label, resolve=False)
    except WebhookError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert len(store.list()) == before
        return
    ep = parse_endpoint(sub["endpoint"])
    assert ep.method in ("https", "udp") and 1 <= ep.port <= 65535 and ep.host
    assert sub["tier"] in DEFAULT_WEBHOOK_TIERS
    assert 1 <= len(sub["assets"]) <= DEFAULT_WEBHOOK_TIERS[sub["tier"]].max_assets
    assert set(sub["assets"]) <= set(ASSETS) and len(set(sub["assets"])) == len(sub["assets"])
    store.remove(sub["id"])


# -- the SSRF guard over every way IPv6 can carry an IPv4 address ---------------------

NOT_GLOBAL_V4 = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                 "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4",
                 "240.0.0.0/4", "198.18.0.0/15"]


def _in(network: str) -> st.SearchStrategy[ipaddress.IPv4Address]:
    net = ipaddress.IPv4Network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


private_v4 = st.one_of(*[_in(n) for n in NOT_GLOBAL_V4])
any_v4 = st.integers(0, (1 << 32) - 1).map(ipaddress.IPv4Address)


@st.composite
def carried(draw: st.DrawFn, v4: st.SearchStrategy[ipaddress.IPv4Address]) -> tuple[str, str]:
    """(an IPv6 text embedding an IPv4 address, that IPv4 address): IPv4-mapped,
    6to4 with any subnet and interface id, NAT64's well-known prefix; each
    written compressed, exploded, upper case or with a dotted tail."""
    addr = draw(v4)
    n = int(addr)
    kind = draw(st.sampled_from(["mapped", "6to4", "nat64"]))
    if kind == "mapped":
        value = (0xFFFF << 32) | n
    elif kind == "6to4":
        value = (0x2002 << 112) | (n << 80) | draw(st.integers(0, (1 << 80) - 1))
    else:
        value = (0x64FF9B << 96) | n
    ip = ipaddress.IPv6Address(value)
    form = draw(st.sampled_from(["compressed", "exploded", "upper", "dotted"]))
    if form == "exploded":
        text = ip.exploded
    elif form == "upper":
        text = ip.compressed.upper()
    elif form == "dotted" and kind != "6to4":
        text = ("::ffff:" if kind == "mapped" else "64:ff9b::") + str(addr)
    else:
        text = ip.compressed
    assert ipaddress.IPv6Address(text) == ip
    return text, str(addr)


@given(case=carried(private_v4))
def test_ssrf_guard_refuses_a_private_ipv4_in_any_ipv6_wrapping(case):
    text, v4 = case
    with pytest.raises(WebhookError, match="refused"):
        check_address(text, allow_private=False)
    check_address(text, allow_private=True)


def _refused(address: str) -> bool:
    try:
        check_address(address, allow_private=False)
    except WebhookError:
        return True
    return False


@given(case=carried(any_v4))
def test_ssrf_guard_judges_a_wrapped_ipv4_as_that_address(case):
    """Whatever the IPv4 address, wrapped it gets the plain address's
    verdict: a public one behind 6to4 or NAT64 passes, a private one not."""
    text, v4 = case
    assert _refused(text) == _refused(v4), (text, v4)


@pytest.mark.parametrize("address", ["2002:7f00:1::", "2002:a00:1::1", "64:ff9b::127.0.0.1",
                                     "64:ff9b:1::8.8.8.8", "::ffff:169.254.169.254",
                                     "2001:0:4136:e378:8000:63bf:3fff:fdd2", "::127.0.0.1"])
def test_ssrf_guard_refuses_the_known_wrappings(address):
    """The issue's 6to4 loopback, NAT64 (well-known and local-use), mapped,
    Teredo and IPv4-compatible forms."""
    with pytest.raises(WebhookError, match="refused"):
        check_address(address, allow_private=False)

"""Hypothesis on `webhooks add` input: whatever the endpoint, tier, assets
and label, the store either accepts a valid subscription or refuses with
one WebhookError; it never raises anything else and never stores a bad one."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beastnet.serve.assets import ASSETS
from beastnet.serve.stores.sqlite import WebhookStore
from beastnet.serve.webhooks import DEFAULT_WEBHOOK_TIERS, WebhookError, parse_endpoint

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

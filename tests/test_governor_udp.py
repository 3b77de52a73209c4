"""The governor on the UDP engine: misses past the adaptive limit answered
{"error":"overloaded"}, public keys before partners, counted; off, nothing
is shed.  The limit algorithm itself is tests/test_governor.py's."""
import asyncio
import concurrent.futures
import socket
import time

import pytest

from beastnet import Answer, UDPServer
from beastnet.loadgen import UDPLoadConfig, run_udp_load
from beastnet.metrics import render, udp_families

from support import governed_table_and_keys, run_side_by_side, wait_for

PUBLIC_KEY = "public-key-000001"
PARTNER_KEY = "partner-key-00001"
OVERLOADED = b'{"error":"overloaded"}'


@pytest.fixture
def gated_udp():
    """A UDP server whose miss handler waits on a gate the test opens: misses
    stay in flight for as long as the test wants, without a timer."""
    gate: concurrent.futures.Future = concurrent.futures.Future()

    async def handler(request):
        await asyncio.wrap_future(gate)
        return Answer({"key": request.key})

    table, keys = governed_table_and_keys(PUBLIC_KEY, PARTNER_KEY)
    server = UDPServer(table, sockets=1, handler=handler, api_keys=keys,
                       cpu_steering=False).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.address[:2])
    try:
        yield server, client, gate
    finally:
        if not gate.done():
            gate.set_result(None)
        client.close()
        server.stop()


def ask(client, tag, key, api_key):
    client.send(f"@{tag} {key} {api_key}".encode())


def replies(client, n, timeout=5.0):
    """The next `n` replies as {tag: body}."""
    client.settimeout(timeout)
    out = {}
    for _ in range(n):
        tag, _, body = client.recv(65536).partition(b" ")
        out[tag[1:].decode()] = body
    return out


def nothing_waiting(client) -> bool:
    client.setblocking(False)
    try:
        client.recv(65536, socket.MSG_PEEK)
        return False
    except BlockingIOError:
        return True
    finally:
        client.setblocking(True)


def inflight(server):
    return server.stats()["governor"]["inflight"]


def test_public_misses_are_shed_at_the_limit_partners_only_at_the_bound(gated_udp):
    server, client, gate = gated_udp
    # Switched on, the limit starts at 20 (within bounds): 20 public misses
    # fill it, the 21st is answered overloaded; partners queue up to 24.
    server.set_governor(True, min_limit=2, max_limit=24, target_ms=1000)
    assert server.stats()["governor"]["limit"] == 20
    for i in range(20):
        ask(client, f"k{i}", f"K{i}", PUBLIC_KEY)
    wait_for(lambda: inflight(server) == 20, message="20 misses in flight")
    assert nothing_waiting(client)
    ask(client, "shed", "K20", PUBLIC_KEY)
    assert replies(client, 1) == {"shed": OVERLOADED}
    # A hit is never shed: it costs what a refusal would.
    ask(client, "hit", "HIT", PUBLIC_KEY)
    assert replies(client, 1) == {"hit": b'{"hit":true}'}
    for i in range(4):
        ask(client, f"p{i}", f"P{i}", PARTNER_KEY)
    wait_for(lambda: inflight(server) == 24, message="partners in flight")
    assert nothing_waiting(client), "a partner miss was answered early"
    ask(client, "bound", "P4", PARTNER_KEY)
    assert replies(client, 1) == {"bound": OVERLOADED}
    stats = server.stats()
    assert (stats["totals"]["shed_public"], stats["totals"]["shed_partner"]) == (1, 1)
    assert stats["totals"]["queued"] == 24
    gate.set_result(None)
    answered = replies(client, 24)
    assert sorted(answered) == sorted([f"k{i}" for i in range(20)] + [f"p{i}" for i in range(4)])
    assert not any(body == OVERLOADED for body in answered.values())
    wait_for(lambda: inflight(server) == 0, message="in flight back to 0")


def test_off_nothing_is_shed_and_switching_on_live_sheds_the_next(gated_udp):
    server, client, gate = gated_udp
    for i in range(30):
        ask(client, f"k{i}", f"K{i}", PUBLIC_KEY)
    wait_for(lambda: inflight(server) == 30, message="30 misses in flight")
    assert nothing_waiting(client)
    assert server.stats()["totals"]["shed_public"] == 0
    server.set_governor(True, min_limit=2, max_limit=40, target_ms=1000)
    ask(client, "late", "late", PUBLIC_KEY)
    assert replies(client, 1) == {"late": OVERLOADED}
    gate.set_result(None)
    assert OVERLOADED not in replies(client, 30).values()
    assert server.stats()["totals"]["shed_public"] == 1
    wait_for(lambda: inflight(server) == 0, message="in flight back to 0")


def test_the_shed_counters_reach_metrics(gated_udp):
    server, client, _ = gated_udp
    server.set_governor(True, min_limit=1, max_limit=1, target_ms=1000)
    ask(client, "a", "A", PUBLIC_KEY)
    wait_for(lambda: inflight(server) == 1, message="one miss in flight")
    ask(client, "b", "B", PUBLIC_KEY)
    assert replies(client, 1) == {"b": OVERLOADED}
    text = render(udp_families(server.stats())).decode()
    assert 'beastnet_udp_shed_public_total{thread="0"} 1' in text
    assert 'beastnet_udp_shed_partner_total{thread="0"} 0' in text


# -- past the knee --------------------------------------------------------------------------

HANDLER_MS = 2.0            # the answer path's cost: a capacity of about 450 misses/s here
TARGET_MS = 20.0


def slow_handler(request):
    time.sleep(HANDLER_MS / 1000)      # blocks the control loop: a fixed service rate
    return Answer({"key": request.key})


def past_the_knee(governor: bool):
    table, keys = governed_table_and_keys(PUBLIC_KEY, PARTNER_KEY)
    server = UDPServer(table, sockets=1, handler=slow_handler, api_keys=keys,
                       cpu_steering=False).start()
    try:
        server.set_governor(governor, min_limit=2, max_limit=400, target_ms=TARGET_MS)

        def load(api_key, sockets, window, key="MISS"):
            # Closed loop: `sockets * window` requests outstanding at all times.
            cfg = UDPLoadConfig(port=server.address[1], keys=[key], api_key=api_key,
                                sockets=sockets, window=window, duration_s=3, warmup_s=0.5,
                                timeout_ms=10_000, threads=1)
            return lambda: run_udp_load(cfg)

        # Partners keep 8 misses waiting, public keys 256: together far past
        # what a 2 ms handler answers within the target.
        results = run_side_by_side({
            "partner": load(PARTNER_KEY, 4, 2),
            "public": load(PUBLIC_KEY, 32, 8),
            # Hits never queue: what the machine alone adds (the noise floor).
            "floor": load(PARTNER_KEY, 1, 1, "HIT")})
        return results, server.stats()
    finally:
        server.stop()


# needs_core: it saturates the machine and times the partners' percentiles
@pytest.mark.needs_core
def test_past_the_knee_partners_stay_whole_and_public_is_shed():
    on, on_stats = past_the_knee(True)
    off, off_stats = past_the_knee(False)
    partner_on, public_on = on["partner"], on["public"]
    partner_off, public_off = off["partner"], off["public"]
    # On: every partner request answered, none overloaded, their p99 near
    # the target (within 4x plus the hits' p99 in the same seconds: a stall of
    # the control loop on a busy 2-core host lands in the top percent).
    assert partner_on.sent > 0 and partner_on.lost == 0
    assert partner_on.error_replies == 0 and partner_on.ok == partner_on.received
    floor_ms = on["floor"].percentile(99) / 1e6
    assert partner_on.percentile(99) / 1e6 < 4 * TARGET_MS + floor_ms
    assert public_on.error_replies > 0.2 * public_on.received
    assert on_stats["totals"]["shed_public"] >= public_on.error_replies
    assert on_stats["totals"]["shed_partner"] == 0
    # Off: nothing shed; the queue grows and everyone waits, partners too.
    assert off_stats["totals"]["shed_public"] == off_stats["totals"]["shed_partner"] == 0
    assert public_off.error_replies == 0 and partner_off.error_replies == 0
    assert partner_off.percentile(99) > 3 * partner_on.percentile(99)
    assert partner_off.percentile(99) / 1e6 > 5 * TARGET_MS

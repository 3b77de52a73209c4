"""A stuck control plane is visible without it: the native threads read the
loop's heartbeat, serve prices as "stale":true and answer /healthz 503 with
the reason, then recover when the loop beats again (docs/serve.md)."""
from __future__ import annotations

import http.client
import re
import threading

import orjson
import pytest

from beastnet import ControlPlane, HTTPServer, ResponseTable, UDPServer
from support import UDPClient, wait_for

pytestmark = pytest.mark.timeout(30)

FRESH = b'{"asset":"BTC","price":97000.5,"ts":1,"source":"sim","seq":1,"quote":"USD","stale":false}'
STALE = FRESH.replace(b'"stale":false', b'"stale":true ')
PLAIN = b'{"p":1}'


def _get(server: HTTPServer, path: str, method: str = "GET",
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*server.address[:2], timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_table_keeps_a_stale_variant_only_when_asked_and_only_of_flagged_bodies():
    plain = ResponseTable({"BTC": FRESH})
    marking = ResponseTable({"BTC": FRESH, "ETH": PLAIN}, stale_marking=True)
    unflagged = ResponseTable({"ETH": PLAIN}, stale_marking=True)
    # The variant is the body once more, in the entry's own block.
    assert (marking.memory_stats()["entry_bytes"] - unflagged.memory_stats()["entry_bytes"]
            - plain.memory_stats()["entry_bytes"]) == len(FRESH)
    assert marking["BTC"] == FRESH and orjson.loads(STALE)["stale"] is True


def test_a_blocked_control_loop_turns_native_answers_stale_and_healthz_503_then_recovers(
        caplog):
    table = ResponseTable({"BTC": FRESH, "PLAIN": PLAIN}, stale_marking=True)
    control = ControlPlane("test-stall-control")
    control.start()
    release = threading.Event()
    try:
        with HTTPServer(table, threads=1, control=control, batch_key="prices",
                        control_stall_s=0.5) as web, \
                UDPServer(table, sockets=1, cpu_steering=False, control=control,
                          control_stall_s=0.5) as udp, \
                UDPClient(udp.address) as client:
            assert _get(web, "/v1/BTC")[2] == FRESH
            assert _get(web, "/healthz")[:1] == (200,)
            assert client.request(b"BTC") == FRESH

            control.call_soon(release.wait, 20)     # the loop thread blocks here
            # Hits are native: poll them until the workers see the stall.
            wait_for(lambda: _get(web, "/v1/BTC")[2] == STALE, timeout=10,
                     message="HTTP hits served stale while the loop is blocked")
            assert web._engine is not None and web._engine.control_stalled_s >= 0.5
            status, headers, body = _get(web, "/healthz")
            assert status == 503, body
            assert headers["Content-Length"] == str(len(body))
            answer = orjson.loads(body)
            assert answer["status"] == "stalled"
            assert re.fullmatch(r"control plane stalled for \d+\.\d s", answer["reason"])
            assert float(answer["reason"].split()[-2]) >= 0.5
            head = _get(web, "/healthz", method="HEAD")
            assert head[0] == 503 and head[2] == b""
            status, headers, body = _get(web, "/v1/BTC")
            assert status == 200 and body == STALE and headers["Content-Length"] == str(len(FRESH))
            assert orjson.loads(body)["stale"] is True
            assert _get(web, "/v1/PLAIN")[2] == PLAIN           # no flag: served as it is
            assert orjson.loads(_get(web, "/v1/prices?symbols=BTC,PLAIN")[2]) == [
                orjson.loads(STALE), orjson.loads(PLAIN)]
            wait_for(lambda: client.request(b"BTC") == STALE, timeout=10,
                     message="UDP hits served stale while the loop is blocked")
            assert client.request(b"@7 BTC") == b"@7 " + STALE

            release.set()                               # the loop runs and beats again
            wait_for(lambda: _get(web, "/healthz")[0] == 200, timeout=10,
                     message="/healthz back to the control plane's 200")
            wait_for(lambda: _get(web, "/v1/BTC")[2] == FRESH, timeout=10,
                     message="HTTP hits fresh again")
            wait_for(lambda: client.request(b"BTC") == FRESH, timeout=10,
                     message="UDP hits fresh again")
            assert web._engine.control_stalled_s == 0.0
            blocked = [r.getMessage() for r in caplog.records
                       if r.getMessage().startswith("the control loop was blocked for")]
            assert blocked, "the gap was not logged once the loop ran again"
    finally:
        release.set()
        control.stop()


def test_control_stall_s_zero_never_judges_and_negative_is_refused():
    table = ResponseTable({"BTC": FRESH}, stale_marking=True)
    with pytest.raises(ValueError, match="control_stall_s"):
        HTTPServer(table, threads=1, control_stall_s=-1)
    with pytest.raises(ValueError, match="control_stall_s"):
        UDPServer(table, sockets=1, control_stall_s=-1)
    with HTTPServer(table, threads=1, control_stall_s=0) as web:
        assert web._engine is not None
        web._engine.control_watch(0.0)
        assert web._engine.control_stalled_s == 0.0


def test_serve_with_its_control_loop_blocked_answers_stale_prices_and_healthz_503(tmp_path):
    """The issue's case: the loop running feeds, admin and usage is stuck
    (there, a reload blocked on a FIFO); the public port and the admin
    listener say so without it."""
    from beastnet.serve.config import load_config
    from beastnet.serve.service import PriceService
    cfg = load_config(profile="dev", overrides={
        "udp_port": 0, "http_port": 0, "admin_port": 0, "control_stall_s": 0.5,
        "feed_rounds_per_s": 20.0})
    release = threading.Event()
    with PriceService(cfg) as service:
        assert service.http is not None and service.admin is not None and service.udp is not None
        http_port, admin = service.http, service.admin
        fresh = _get(http_port, "/v1/BTC")[2]
        assert orjson.loads(fresh)["stale"] is False
        assert _get(admin, "/healthz")[0] == 200
        try:
            service.control.call_soon(release.wait, 20)
            wait_for(lambda: orjson.loads(_get(http_port, "/v1/BTC")[2])["stale"] is True,
                     timeout=10, message="prices served stale with the loop blocked")
            for server in (admin, http_port):           # a probe may watch either port
                status, _, body = _get(server, "/healthz")
                assert status == 503 and orjson.loads(body)["status"] == "stalled", body
            with UDPClient(service.udp.address) as client:
                assert orjson.loads(client.request(b"ETH"))["stale"] is True
        finally:
            release.set()
        wait_for(lambda: _get(admin, "/healthz")[0] == 200, timeout=10,
                 message="/healthz 200 once the loop runs")
        assert orjson.loads(_get(http_port, "/v1/BTC")[2])["stale"] is False

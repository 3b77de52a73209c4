"""Several servers on one control plane: the loop a caller starts, passes as
`control=`, and stops after the servers."""
from __future__ import annotations

import http.client
import threading

import pytest

from beastnet import ControlPlane, HTTPServer, ResponseTable, ServerError, UDPServer
from support import UDPClient

pytestmark = pytest.mark.timeout(30)


def _control_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "control" in t.name]


def test_udp_and_http_servers_share_one_control_plane():
    table = ResponseTable({"BTC": b'{"p":1}'})
    seen: list[str] = []

    async def on_miss(request):
        seen.append(threading.current_thread().name)
        return {"miss": request.key}

    control = ControlPlane("test-shared-control")
    control.start()
    try:
        with UDPServer(table, sockets=1, cpu_steering=False, handler=on_miss,
                       control=control) as udp, \
                HTTPServer(table, threads=1, handler=on_miss, control=control) as web:
            assert _control_threads() == ["test-shared-control"]
            with UDPClient(udp.address) as client:
                assert client.request(b"NOPE") == b'{"miss":"NOPE"}'
            conn = http.client.HTTPConnection(*web.address[:2], timeout=5)
            conn.request("GET", "/v1/ELSE")
            assert conn.getresponse().read() == b'{"miss":"ELSE"}'
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
        assert seen == ["test-shared-control", "test-shared-control"]
        # The servers stopped; the loop they were given still runs.
        assert control.running
        assert control.run(lambda: 42) == 42
    finally:
        control.stop()
    assert not control.running


def test_a_control_plane_that_is_not_running_is_refused():
    table = ResponseTable({"BTC": b"1"})
    stopped = ControlPlane()
    stopped.start()
    stopped.stop()
    server = HTTPServer(table, threads=1, control=stopped)
    with pytest.raises(ServerError, match="control plane .* must be started"):
        server.start()

"""The one vocabulary of error replies (_replies.pxi): every name documented,
and the bodies the engines send are its bytes."""
import socket
from pathlib import Path

from beastnet import HTTPServer, ResponseTable, UDPServer, _core
from beastnet.control import error_answer

PROTOCOL_MD = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_every_error_is_documented_with_its_status():
    for name, status, _when in _core.ERRORS:
        body = _core.ERROR_BODIES[name].decode()
        assert body == '{"error":"%s"}' % name
        assert f"| {status} | `{body}`" in PROTOCOL_MD, f"{name} missing from docs/protocol.md"


def test_error_answer_is_the_engines_body_and_status():
    answer = error_answer("forbidden")
    assert (answer.body, answer.status) == (b'{"error":"forbidden"}', 403)
    assert _core.ERROR_BODIES["forbidden"] is answer.body


def test_both_engines_send_the_shared_bytes():
    table = ResponseTable()
    with UDPServer(table, sockets=1) as udp, HTTPServer(table, threads=1) as http:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(2)
        client.sendto(b"NOPE", udp.address)
        assert client.recv(100) == _core.ERROR_BODIES["not_found"]
        client.close()
        with socket.create_connection(http.address, timeout=2) as conn:
            conn.sendall(b"GET /v1/NOPE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 404 ")
        assert reply.endswith(b"\r\n\r\n" + _core.ERROR_BODIES["not_found"])

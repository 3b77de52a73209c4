"""UDP amplification factor of every reply kind: reply bytes / request bytes.

    PYTHONPATH=src python benchmarks/udp_amplification.py [--json out.json]

For each kind of reply, the smallest request that draws it is sent to a live
`UDPServer` on loopback, and the reply is measured.  Two factors are printed:
the payload ratio, and the ratio on the wire over IPv4 (20-byte IP + 8-byte
UDP header on both datagrams; Ethernet framing would lower it further).  An
empty datagram is a valid request with 0 payload bytes: its payload ratio is
infinite, its wire ratio is not.  Response-rate limiting is off for the
measurement (it bounds how often, not how large); a slipped reply is measured
separately.  Figures are exact byte counts, not timings: any machine gives
the same table (rate_limited's retry_after_ms digits can vary by one byte).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Optional

from beastnet import APIKeyTable, ResponseTable, UDPServer, _core

WIRE_HEADER_BYTES = 28                      # IPv4 header + UDP header


def ask(address: tuple, payload: bytes, timeout: float = 1.0) -> Optional[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, address)
        try:
            return s.recv(70000)
        except socket.timeout:
            return None


def row(kind: str, config: str, request: bytes, reply: Optional[bytes]) -> dict:
    req, rep = len(request), len(reply) if reply is not None else 0
    return {
        "kind": kind, "config": config, "request": request.decode("latin-1"),
        "request_bytes": req, "reply_bytes": rep,
        "payload_factor": (rep / req) if req else (float("inf") if rep else 0.0),
        "wire_factor": (rep + WIRE_HEADER_BYTES) / (req + WIRE_HEADER_BYTES) if reply is not None else 0.0,
    }


def measure() -> list[dict]:
    rows = []
    body = b'{"asset":"BTC","price":97000.12,"ts":1732000000000}'
    table = ResponseTable({"B": body, "L": b"x" * 65507, "X": b"x" * 65508})
    open_cfg = "no API keys"
    with UDPServer(table, sockets=1, rrl_rate_per_s=0) as srv:
        a = srv.address
        rows.append(row(f"hit (a {len(body)}-byte body)", open_cfg, b"B", ask(a, b"B")))
        rows.append(row("hit (largest body)", open_cfg, b"L", ask(a, b"L")))
        rows.append(row("too_large", open_cfg, b"X", ask(a, b"X")))
        rows.append(row("not_found", open_cfg, b"N", ask(a, b"N")))
        rows.append(row("bad_request", open_cfg, b"\n", ask(a, b"\n")))
        rows.append(row("bad_request (empty datagram)", open_cfg, b"", ask(a, b"")))
    with UDPServer(table, sockets=1, rrl_rate_per_s=1e-9, rrl_burst=1, rrl_slip=1,
                   rrl_exempt_loopback=False) as srv:
        ask(srv.address, b"N")                          # spends the one-reply budget
        rows.append(row("slip (RRL-limited error)", open_cfg, b"@1 N", ask(srv.address, b"@1 N")))
    keys = APIKeyTable()
    keys.set("k", qps=1e-6, burst=1)
    keys.set("q", monthly_cap=1)
    keys.set("p")
    keyed = "API keys (defaults)"
    with UDPServer(table, sockets=1, api_keys=keys, rrl_rate_per_s=0) as srv:
        a = srv.address
        rows.append(row("unauthorized", keyed, b"B", ask(a, b"B", 0.3)))
        rows.append(row("bad_request", keyed, b"\n", ask(a, b"\n", 0.3)))
        rows.append(row("not_found", keyed, b"N p", ask(a, b"N p")))
        ask(a, b"B k")
        rows.append(row("rate_limited", keyed, b"B k", ask(a, b"B k")))
        ask(a, b"B q")
        rows.append(row("over_quota", keyed, b"B q", ask(a, b"B q")))
    with UDPServer(table, sockets=1, api_keys=keys, silent_refusals=False, rrl_rate_per_s=0) as srv:
        rows.append(row("unauthorized", "API keys, silent_refusals=False", b"B",
                        ask(srv.address, b"B")))

    # busy needs a full miss queue at the instant of the request: its size is
    # that of the body the reader sends, the shared bytes in ERROR_BODIES.
    rows.append(row("busy (miss queue full)", "miss handler", b"N", _core.ERROR_BODIES["busy"]))
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = measure()
    print("| reply | server | smallest request | request B | reply B | payload × | wire × (IPv4) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        reply = r["reply_bytes"] if r["wire_factor"] else "no reply"
        pf = "∞" if r["payload_factor"] == float("inf") else f"{r['payload_factor']:.1f}"
        print(f"| {r['kind']} | {r['config']} | `{r['request']!r}` | {r['request_bytes']} | {reply} "
              f"| {pf} | {r['wire_factor']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

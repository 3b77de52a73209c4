"""A UDP load process for limit tests: keeps `WINDOW` requests in flight on
each of `SOCKETS` sockets (distinct source ports, so SO_REUSEPORT spreads them
over the server's readers) until STOP_FILE exists, then collects the replies
still in flight and prints a JSON count of the reply bodies it got.

    python _udp_blaster.py HOST PORT PAYLOAD SOCKETS WINDOW STOP_FILE
"""
from __future__ import annotations

import collections
import os
import selectors
import socket
import sys

import orjson


def run(host: str, port: int, payload: bytes, nsockets: int, window: int, stop_file: str) -> dict:
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(nsockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        for _ in range(window):
            s.send(payload)
    replies: collections.Counter = collections.Counter()
    idle = 0
    stopping = False
    while True:
        events = sel.select(0.3)
        if not events:
            # quiet: drained after the stop, the server went away, or a
            # datagram was lost (then refill the window)
            idle += 1
            if stopping or idle > 30:
                break
            for s in socks:
                s.send(payload)
            continue
        idle = 0
        stopping = stopping or os.path.exists(stop_file)
        for key, _ in events:
            s = key.fileobj
            while True:
                try:
                    body = s.recv(2048)                   # type: ignore[union-attr]
                except BlockingIOError:
                    break
                replies[body.decode("latin-1")] += 1
                if not stopping:
                    s.send(payload)                       # type: ignore[union-attr]
    for s in socks:
        sel.unregister(s)
        s.close()
    sel.close()
    return dict(replies)


if __name__ == "__main__":
    h, p, body, n, w, stop = sys.argv[1:7]
    print(orjson.dumps(run(h, int(p), body.encode(), int(n), int(w), stop)).decode())

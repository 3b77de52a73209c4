"""A torn-read client, run as its own process by test_concurrency.py so that
checking replies does not compete with the writer for the GIL.

    python _torn_client.py HOST PORT INDEX REPLIES WINDOW ROUNDS_FILE MIN_ROUNDS

It asks for the 150 keys in turn, `WINDOW` tagged requests in flight, and
checks each reply: key, CRC32, padding, and freshness: ROUNDS_FILE holds the
number of rounds the writer has completed (8 bytes, little-endian), and a reply
to a request sent after round R was complete must carry a version >= R.  It
stops once it has checked REPLIES replies and the writer has completed
MIN_ROUNDS rounds, then prints a JSON summary; any bad reply exits 1.
"""
from __future__ import annotations

import mmap
import socket
import struct
import sys
import zlib

import orjson

NKEYS = 150
KEYS = [f"sym:{i:03d}/usd" for i in range(NKEYS)]


def make_body(key: str, version: int) -> bytes:
    # pad length changes with the version: a mix of two entries cannot keep
    # both the JSON shape and the checksum right
    payload = {"key": key, "v": version, "pad": "x" * (version % 97)}
    raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return orjson.dumps({"p": payload, "crc": zlib.crc32(raw)})


def check_body(key: str, body: bytes) -> int:
    """The version in a valid body for `key`; raises AssertionError otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AssertionError(f"unparseable reply for {key}: {body[:80]!r}") from exc
    raw = orjson.dumps(doc["p"], option=orjson.OPT_SORT_KEYS)
    assert zlib.crc32(raw) == doc["crc"], f"checksum mismatch for {key}: {body[:80]!r}"
    assert doc["p"]["key"] == key, f"asked {key}, got {doc['p']['key']}"
    assert doc["p"]["pad"] == "x" * (doc["p"]["v"] % 97)
    return int(doc["p"]["v"])


def run(host: str, port: int, idx: int, replies: int, window: int, rounds_path: str,
        min_rounds: int) -> dict:
    with open(rounds_path, "r+b") as f:
        rounds = mmap.mmap(f.fileno(), 8)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(5.0)
    sock.connect((host, port))
    last: dict[str, int] = {}
    seq = checked = max_version = 0
    done_round = 0
    while checked < replies or done_round < min_rounds:
        done_round = struct.unpack_from("<Q", rounds)[0]    # read before sending
        want = {}
        for _ in range(window):
            key = KEYS[(seq * 7 + idx) % NKEYS]
            tag = b"@%d " % seq
            want[tag] = key
            sock.send(tag + key.encode())
            seq += 1
        for _ in range(window):
            tag, sep, body = sock.recv(70000).partition(b" ")
            key = want.pop(tag + sep)
            version = check_body(key, body)
            assert version >= done_round, (
                f"client {idx} key {key}: version {version} after the writer finished "
                f"round {done_round}: a stale read")
            if window == 1:             # with more in flight, two readers may swap answers
                assert version >= last.get(key, 0), (
                    f"client {idx} key {key}: version {version} after {last[key]}")
            last[key] = max(version, last.get(key, 0))
            max_version = max(max_version, version)
            checked += 1
    sock.close()
    return {"replies": checked, "max_version": max_version, "last_round_seen": done_round}


if __name__ == "__main__":
    h, p, i, n, w, path, r = sys.argv[1:8]
    try:
        result = run(h, int(p), int(i), int(n), int(w), path, int(r))
    except (AssertionError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    print(orjson.dumps(result).decode())

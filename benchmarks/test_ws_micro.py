"""Microbenchmarks: beastnet's WebSocket pieces next to the `websockets` library's.

    PYTHONPATH=src python -m pytest benchmarks/test_ws_micro.py --benchmark-disable-gc

Kept out of the unit suite (tests/).  Each group pairs beastnet's native code,
reached through its test entry points in `_core`, with the Python code the
`websockets` peer (peers/ws_websockets.py) runs for the same step:
- reading client frames: 100 masked text frames (feed requests, 50-60 bytes)
  through `_core.ws_parse` (the worker's frame reader: unmasking, UTF-8
  check) vs websockets' sans-I/O `Frame.parse` (its C mask speed-up when
  built) plus the text decode a message gets;
- reading a subscribe request: `_core.ws_read_request` (the worker's JSON
  reader) vs `json.loads` and the checks peers/ws_feed.py makes;
- framing one ~90-byte body for N subscribers: beastnet frames once per
  publication (`_core.ws_frame`), websockets' `broadcast()` serializes the frame
  once per connection (`Frame.serialize`, as its protocol's send_text does).
The summary prints ns per operation (per frame, request or subscriber).

Limits: in-process timings on a shared VM; compare within a group and a run.
The `_core` entry points add a Python call and build Python objects for their
results (tuples, bytes) that the native workers never make, so they overstate
beastnet's cost.
"""
from __future__ import annotations

import json
import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from beastnet import _core
from peers.ws_feed import body, parse_subscribe

FRAMES = 100
SUBSCRIBERS = 1000


def masked_text(payload: bytes) -> bytes:
    """A client text frame (FIN, masked), as a browser sends it."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


REQUESTS = [json.dumps({"op": "subscribe", "symbols": [f"S{i:03d}", f"S{i + 1:03d}"]},
                       separators=(",", ":")).encode() for i in range(FRAMES)]
WIRE = b"".join(masked_text(r) for r in REQUESTS)


# -- reading client frames ------------------------------------------------------------

@pytest.mark.benchmark(group=f"read {FRAMES} masked text frames (~55 B) per call")
def test_frames_beastnet(benchmark, per_op):
    events, used = benchmark(_core.ws_parse, WIRE)
    assert used == len(WIRE) and len(events) == FRAMES
    assert events[0] == ("message", 1, REQUESTS[0])
    per_op(benchmark, FRAMES)


@pytest.mark.benchmark(group=f"read {FRAMES} masked text frames (~55 B) per call")
def test_frames_websockets(benchmark, per_op):
    def parse(wire: bytes) -> list[str]:
        reader = StreamReader()
        reader.feed_data(wire)
        out = []
        while len(out) < FRAMES:
            gen = Frame.parse(reader.read_exact, mask=True, max_size=65536)
            try:
                next(gen)
            except StopIteration as done:
                frame = done.value
                out.append(frame.data.decode())        # a text message is decoded (UTF-8 check)
        return out

    got = benchmark(parse, WIRE)
    assert len(got) == FRAMES and got[0].encode() == REQUESTS[0]
    per_op(benchmark, FRAMES)


# -- reading a subscribe request --------------------------------------------------------

def symbols_read(read_one):
    """A call that reads every request with `read_one` and counts the symbols."""
    def read(reqs: list[bytes]) -> int:
        return sum(len(read_one(r) or ()) for r in reqs)
    return read


@pytest.mark.benchmark(group=f"read {FRAMES} subscribe requests per call")
def test_request_beastnet(benchmark, per_op):
    assert benchmark(symbols_read(lambda r: _core.ws_read_request(r)[2]), REQUESTS) == 2 * FRAMES
    per_op(benchmark, FRAMES)


@pytest.mark.benchmark(group=f"read {FRAMES} subscribe requests per call")
def test_request_python_json(benchmark, per_op):
    assert benchmark(symbols_read(parse_subscribe), REQUESTS) == 2 * FRAMES
    per_op(benchmark, FRAMES)


# -- framing one body for many subscribers ----------------------------------------------

BODY = body("S000", 0, 1, 1_700_000_000_000_000_000)


@pytest.mark.benchmark(group=f"frame one {len(BODY)}-byte body for {SUBSCRIBERS} subscribers")
def test_frame_once_beastnet(benchmark, per_op):
    def publish(b: bytes) -> list[bytes]:
        frame = _core.ws_frame(1, b)
        return [frame] * SUBSCRIBERS               # each queue holds a reference

    frames = benchmark(publish, BODY)
    assert frames[0] == bytes([0x81, len(BODY)]) + BODY
    per_op(benchmark, SUBSCRIBERS)


@pytest.mark.benchmark(group=f"frame one {len(BODY)}-byte body for {SUBSCRIBERS} subscribers")
def test_frame_per_subscriber_websockets(benchmark, per_op):
    text = BODY.decode()

    def publish(t: str) -> list[bytes]:
        return [Frame(Opcode.TEXT, t.encode()).serialize(mask=False)
                for _ in range(SUBSCRIBERS)]

    frames = benchmark(publish, text)
    assert frames[0] == bytes([0x81, len(BODY)]) + BODY
    per_op(benchmark, SUBSCRIBERS)

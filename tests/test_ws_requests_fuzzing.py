"""The feed's client requests ({"op":..., "symbols":[...]}) read natively,
against the standard library's reading of the same bytes (ws_reference.read_request):
valid requests, every JSON value in unknown fields, escapes, malformed JSON
and truncations."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beastnet._core import ws_read_request
import ws_reference as ref

pytestmark = pytest.mark.timeout(120)
CHEAP = settings(max_examples=1000, deadline=None)

KEYISH = st.from_regex(r"\A[A-Za-z0-9._:/-]{1,64}\Z", fullmatch=True)
symbols = st.lists(st.one_of(KEYISH, KEYISH, st.text(max_size=70), st.integers(-2**63, 2**63 - 1),
                             st.none(), st.just("")), max_size=12)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
requests = st.fixed_dictionaries(
    {}, optional={"op": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "snapshot",
                                                    "Subscribe", "sub", ""]), json_values),
                  "symbols": st.one_of(symbols, json_values),
                  "id": json_values, "extra": json_values})


def escape_some(raw: bytes, which: int) -> bytes:
    # JSON allows any character in a string as \u00XX and '/' as \/: clients differ.
    if which == 1:
        return raw.replace(b"/", b"\\/")
    if which == 2:
        return raw.replace(b'"B', b'"\\u0042')
    return raw


@CHEAP
@given(requests, st.integers(0, 2), st.sampled_from([b"", b" ", b"\n\t "]))
def test_native_reading_agrees_with_orjson(obj, escapes, pad):
    message = pad + escape_some(orjson.dumps(obj), escapes) + pad
    assert ws_read_request(message, 8) == ref.read_request(message, 8)


@CHEAP
@given(requests, st.data())
def test_truncated_and_mutated_messages(obj, data):
    message = bytearray(orjson.dumps(obj))
    if message and data.draw(st.booleans()):
        del message[data.draw(st.integers(0, len(message) - 1)):]
    elif message:
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(
            st.sampled_from(b'{}[],:"\\ 0a-.eE'))
    message = bytes(message)
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:          # the frame layer refuses these first (1007)
        return
    assert ws_read_request(message, 8) == ref.read_request(message, 8)


@pytest.mark.parametrize("message,expected", [
    (b'{"op":"subscribe","symbols":["BTC","ETH"]}', ("subscribe", None, ["BTC", "ETH"], 0)),
    (b'{"symbols":["BTC"],"op":"unsubscribe"}', ("unsubscribe", None, ["BTC"], 0)),
    (b'{"op":"snapshot"}', ("snapshot", None, [], 0)),
    (b'{"op":"subscribe"}', ("bad", "no_symbols", [], 0)),
    (b'{"op":"subscribe","symbols":["BTC","no spaces",7,"\\u00e9"]}', ("subscribe", None, ["BTC"], 3)),
    (b'{"op":"subscribe","symbols":"BTC"}', ("bad", "bad_json", [], 0)),
    (b'{"op":"subscribe","symbols":["BTC"],}', ("bad", "bad_json", [], 0)),
    (b'{"op":"subscribe","symbols":["BTC"]} x', ("bad", "bad_json", [], 0)),
    (b'{"op":"subscribe","symbols":[01]}', ("bad", "bad_json", [], 0)),
    (b"[]", ("bad", "bad_json", [], 0)),
    (b"", ("bad", "bad_json", [], 0)),
    (b'{"op":"dance"}', ("bad", "unknown_op", [], 0)),
])
def test_named_requests(message, expected):
    assert ws_read_request(message) == expected == ref.read_request(message)


def test_too_many_symbols_is_an_error_not_a_truncation():
    message = orjson.dumps({"op": "subscribe", "symbols": [f"S{i}" for i in range(20)]})
    assert ws_read_request(message, 16) == ("bad", "too_many_symbols", [], 0)
    assert ws_read_request(message, 20)[:2] == ("subscribe", None)


def test_deep_nesting_is_bad_json_not_a_crash():
    message = b'{"op":"subscribe","x":' + b"[" * 10_000 + b"]" * 10_000 + b',"symbols":[]}'
    assert ws_read_request(message)[:2] == ("bad", "bad_json")

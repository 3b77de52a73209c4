"""One verdict for every WebSocket run: `load ws://`, each `ws density` tier
and each `ws stress` level must FAIL, naming the rule, against scripted
servers of known misbehaviour (tests/_ws_scripted.py): a 1.5 s stall,
dropped sequence numbers, connections closed by the server.  The rules
themselves (ws/verdict.py `judge_ws`) are checked on plain results too.
"""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

# Imported outside any capsys (see tests/test_loadgen_ws.py).
from beastnet.loadgen import report  # noqa: F401
from beastnet.loadgen.ws.verdict import WSCriteria, judge_ws

from _ws_scripted import ScriptedServer

pytestmark = pytest.mark.timeout(90)

STALL_S = 1.5


async def _send(ws, seq: int) -> None:
    await ws.send(json.dumps({"seq": seq, "ts": time.time_ns() // 10**6}))


async def stalls(ws, server):
    """A message every 10 ms, then nothing for 1.5 s, then on again."""
    await ws.recv()                                         # the subscribe message
    seq = 0
    while True:                                             # until the client leaves
        seq += 1
        if seq == 30:
            await asyncio.sleep(STALL_S)
        await _send(ws, seq)
        await asyncio.sleep(0.01)


async def drops(ws, server):
    """Every 10th sequence number never sent."""
    await ws.recv()
    seq = 0
    while True:
        seq += 1
        if seq % 10:
            await _send(ws, seq)
        await asyncio.sleep(0.005)


async def closes(ws, server):
    """A few messages, then a close by the server: the client reconnects."""
    await ws.recv()
    for seq in range(1, 11):
        await _send(ws, seq)
        await asyncio.sleep(0.01)
    await ws.close(1001, "going away")


# (behaviour, text of the reason that must be given, seconds to run)
CASES = {
    "stall": (stalls, "longest stall", 2.5),
    "gaps": (drops, "sequence numbers missing", 1.0),
    # 2 s: at load 8-12 an upgrade took 0.95 s (p95), and the close after
    # ten messages then fell past a 1 s run: no reconnect to judge
    "closes": (closes, "reconnects > --max-reconnects 0", 2.0),
}
COMMON = ["--seq-key", "seq", "-c", "1", "--warmup", "0.1", "--backoff-ms", "20"]


def _run_cli(argv, tmp_path, capsys):
    from beastnet.cli import main
    out = tmp_path / "r.json"
    rc = main(argv + ["--json", str(out)])
    text = capsys.readouterr().out
    return rc, json.loads(out.read_text()), text


@pytest.mark.parametrize("case", list(CASES))
def test_load_ws_fails_naming_the_rule(case, tmp_path, capsys):
    behaviour, reason, seconds = CASES[case]
    with ScriptedServer(behaviour) as server:
        rc, body, text = _run_cli(["load", f"ws://127.0.0.1:{server.port}/", "-d",
                                   str(seconds), *COMMON], tmp_path, capsys)
    assert body["verdict"] == "fail", body["reasons"]
    assert any(reason in r for r in body["reasons"]), body["reasons"]
    assert rc == 1
    # The verdict line names the first rule that failed.
    line = next(x for x in text.splitlines() if x.startswith("verdict:"))
    assert line == f"verdict: FAIL: {body['reasons'][0]}"
    if case == "gaps":
        # Missing sequence numbers are lost messages: they lower the success rate.
        r = body["result"]
        assert r["lost"] > 0 and r["success_rate"] < 1.0
        assert r["sent"] == r["received"] + r["lost"]


@pytest.mark.parametrize("case", list(CASES))
def test_ws_density_tier_fails_naming_the_rule(case, tmp_path, capsys):
    behaviour, reason, seconds = CASES[case]
    with ScriptedServer(behaviour) as server:
        rc, body, text = _run_cli(["ws", "density", f"ws://127.0.0.1:{server.port}/",
                                   "--tiers", "1", "--p99-ms", "60000", "-d", str(seconds),
                                   *COMMON], tmp_path, capsys)
    tier = body["tiers"][0]
    assert tier["verdict"] == "fail", tier["reasons"]
    assert any(reason in r for r in tier["reasons"]), tier["reasons"]
    assert body["verdict"] == "fail" and rc == 1
    assert f"1 symbols: fail: {tier['reasons'][0]}" in text


@pytest.mark.parametrize("case", list(CASES))
def test_ws_stress_level_fails_naming_the_rule(case, tmp_path, capsys):
    behaviour, reason, seconds = CASES[case]
    with ScriptedServer(behaviour) as server:
        rc, body, text = _run_cli(["ws", "stress", f"ws://127.0.0.1:{server.port}/",
                                   "--levels", "1", "--dimensions", "", "-d", str(seconds),
                                   *COMMON], tmp_path, capsys)
    level = body["levels"][0]
    assert level["verdict"] == "fail", level["reasons"]
    assert any(reason in r for r in level["reasons"]), level["reasons"]
    assert body["verdict"] == "fail" and rc == 1


def _result(**extra):
    """A LoadResult-shaped object: one healthy second unless told otherwise."""
    e = {"messages_per_s": 100.0, "reconnects": 0, "longest_stall_ms": 10.0, "gap_events": 0}
    e.update(extra.pop("extra", {}))
    fields = dict(received=100, lost=0, errors=0, errors_by_kind={}, success_rate=1.0,
                  timeline=[], extra=e, percentile=lambda q: 1e6)
    fields.update(extra)
    return SimpleNamespace(**fields)


def test_judge_ws_rules_on_their_limits():
    crit = WSCriteria(max_gaps=2, max_stall_ms=1000, max_reconnects=1)
    assert judge_ws(_result(), crit) == ("pass", [])
    # At a limit passes, past it fails, with the flag named.
    assert judge_ws(_result(lost=2), crit)[0] == "pass"
    verdict, reasons = judge_ws(_result(lost=3, success_rate=100 / 103,
                                        extra={"gap_events": 3}), crit)
    assert verdict == "fail" and "(--max-gaps 2)" in reasons[0] and "97.087%" in reasons[0]
    assert judge_ws(_result(extra={"longest_stall_ms": 1000.0}), crit)[0] == "pass"
    verdict, reasons = judge_ws(_result(extra={"longest_stall_ms": 1500.0}), crit)
    assert verdict == "fail" and reasons == ["longest stall 1500 ms > --max-stall-ms 1000"]
    assert judge_ws(_result(extra={"reconnects": 1}), crit)[0] == "pass"
    verdict, reasons = judge_ws(_result(extra={"reconnects": 2}), crit)
    assert verdict == "fail" and reasons == ["2 reconnects > --max-reconnects 1"]
    verdict, reasons = judge_ws(_result(received=0), crit)
    assert verdict == "fail" and reasons[0] == "no message received"

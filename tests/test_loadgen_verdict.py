"""Verdicts that cannot lie: each way a run used to pass against a dead or
refusing server, the expected outcomes a user declares, the one-line reason
and the exit statuses of `beastnet load`."""
from __future__ import annotations

import re
import socket

import pytest

from beastnet import ResponseTable, UDPServer
from beastnet.cli import main
from beastnet.cli._common import EXIT_FAIL, EXIT_PASS, EXIT_UNREACHABLE, EXIT_USAGE
from beastnet.loadgen import LoadResult
from beastnet.loadgen.ramp import Criteria, Level, judge_run, run_ramp
from beastnet.loadgen.verdict import Expect, judge_outcomes, unreachable

from _loadgen_servers import ScriptedTCPServer, ScriptedUDPServer, read_requests, tag_of
import support

pytestmark = pytest.mark.timeout(60)

# A generous timeout: the scripted servers are Python threads on a shared
# box, and a run expected to pass must not lose a request to a slow second.
SHORT = ["-d", "0.4", "--warmup", "0.1", "--timeout-ms", "1000"]
UDP_SHORT = SHORT + ["-s", "4", "-w", "4", "-t", "1"]
HTTP_SHORT = SHORT + ["-c", "4", "-t", "1"]
# Against a dead target: a short timeout, so measured requests time out
# within the run and the reason can name them.
UDP_DEAD = UDP_SHORT + ["--timeout-ms", "100"]
HTTP_DEAD = HTTP_SHORT + ["--timeout-ms", "100"]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    return support.free_port(kind=kind)


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def answering(body: bytes):
    return lambda data: [tag_of(data) + body]


def http_answering(status: int, body: bytes):
    def handle(conn):
        for _ in read_requests(conn):
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
    return handle


# -- the four lying cases of the issue: each passed with exit 0 before ---------------


def test_udp_with_nothing_listening_is_unreachable(capsys):
    code = main(["load", f"127.0.0.1:{free_port()}"] + UDP_DEAD)
    line = last_line(capsys)
    assert code == EXIT_UNREACHABLE
    assert line.startswith("verdict: FAIL: nothing was answered") and "refused" in line


def test_udp_key_enforcing_server_without_api_key_fails(capsys):
    with ScriptedUDPServer(replies=answering(b'{"error":"unauthorized"}')) as server:
        code = main(["load", f"127.0.0.1:{server.port}"] + UDP_SHORT)
    line = last_line(capsys)
    assert code == EXIT_FAIL
    assert "success 0.000% < 99.900%" in line and "unauthorized" in line and "--api-key" in line


def test_real_server_with_api_keys_refuses_a_run_without_a_key(capsys):
    from beastnet import APIKeyTable
    table = ResponseTable()
    table["BTC"] = b'{"p":1}'
    keys = APIKeyTable()
    keys.set("k" * 16)
    with UDPServer(table, "127.0.0.1", 0, sockets=1, api_keys=keys) as server:
        # With keys enforced the engine leaves keyless requests unanswered
        # (no amplification): nothing came back, and the line says why.
        code = main(["load", f"127.0.0.1:{server.address[1]}"] + UDP_DEAD)
        line = last_line(capsys)
        assert code == EXIT_UNREACHABLE and "--api-key" in line, line
    with UDPServer(table, "127.0.0.1", 0, sockets=1, api_keys=keys,
                   silent_refusals=False) as server:
        code = main(["load", f"127.0.0.1:{server.address[1]}"] + UDP_SHORT)
        line = last_line(capsys)
        assert code == EXIT_FAIL and "unauthorized" in line
        code = main(["load", f"127.0.0.1:{server.address[1]}", "--api-key", "k" * 16] + UDP_SHORT)
        assert code == EXIT_PASS, capsys.readouterr().out


def test_http_against_a_non_http_port_fails(capsys):
    def handle(conn):
        for _ in read_requests(conn):
            conn.sendall(b"SSH-2.0-OpenSSH_9.0 not http at all\r\n\r\n")
    with ScriptedTCPServer(handle) as server:
        code = main(["load", f"http://127.0.0.1:{server.port}/"] + HTTP_SHORT)
    line = last_line(capsys)
    # Bytes came back: reachable, but wrong.
    assert code == EXIT_FAIL and "parse" in line and "not an HTTP server?" in line


def test_port_that_accepts_and_never_answers_is_unreachable(capsys):
    def handle(conn):
        for _ in read_requests(conn):
            pass
    with ScriptedTCPServer(handle) as server:
        code = main(["load", f"http://127.0.0.1:{server.port}/"] + HTTP_DEAD)
    line = last_line(capsys)
    assert code == EXIT_UNREACHABLE and "nothing was answered" in line and "lost" in line


def test_silent_udp_port_is_unreachable(capsys):
    with ScriptedUDPServer(drop_every=1) as server:
        code = main(["load", f"127.0.0.1:{server.port}"] + UDP_DEAD)
    assert code == EXIT_UNREACHABLE and "100.000%" in capsys.readouterr().out


def test_silent_target_with_a_long_timeout_is_unreachable_too(capsys):
    # The warm-up fills every slot and none comes free: no measured request
    # at all.  Before, that read "no request was sent" and said nothing of
    # the target.
    with ScriptedUDPServer(drop_every=1) as server:
        code = main(["load", f"127.0.0.1:{server.port}"] + UDP_SHORT)
    line = last_line(capsys)
    assert code == EXIT_UNREACHABLE
    # Normally all 16 slots fill in the warm-up; on a loaded box the thread
    # may start late and send its first requests inside the measured window.
    assert re.fullmatch(r"verdict: FAIL: nothing was answered: (16 requests sent in the "
                        r"warm-up, none answered, none measured|\d+ lost \(no answer within "
                        r"--timeout-ms\))", line), line


def test_http_connection_refused_is_unreachable(capsys):
    code = main(["load", f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/"] + HTTP_DEAD)
    line = last_line(capsys)
    assert code == EXIT_UNREACHABLE and "connect_refused" in line


# -- thresholds and expected outcomes -------------------------------------------------


def test_a_few_error_bodies_above_the_threshold_fail(capsys):
    n = [0]

    def replies(data):
        n[0] += 1
        return [tag_of(data) + (b'{"error":"not_found"}' if n[0] % 50 == 0 else b'{"v":1}')]
    with ScriptedUDPServer(replies=replies) as server:
        code = main(["load", f"127.0.0.1:{server.port}"] + UDP_SHORT)
        line = last_line(capsys)
        assert code == EXIT_FAIL and "not_found" in line
        # 2 % errors are within a 95 % threshold.
        code = main(["load", f"127.0.0.1:{server.port}", "--min-success", "0.95"] + UDP_SHORT)
        assert code == EXIT_PASS, capsys.readouterr().out


def test_expect_rate_limited_passes_a_limit_test_over_udp(capsys):
    body = b'{"error":"rate_limited","retry_after_ms":5}'
    with ScriptedUDPServer(replies=answering(body)) as server:
        assert main(["load", f"127.0.0.1:{server.port}"] + UDP_SHORT) == EXIT_FAIL
        assert "rate_limited" in last_line(capsys)
        code = main(["load", f"127.0.0.1:{server.port}", "--expect", "rate_limited"] + UDP_SHORT)
        assert code == EXIT_PASS, capsys.readouterr().out
        # Expecting another error does not excuse this one.
        assert main(["load", f"127.0.0.1:{server.port}", "--expect", "busy"] + UDP_SHORT) == EXIT_FAIL


@pytest.mark.parametrize("flags,code", [
    ([], EXIT_FAIL),
    (["--expect-status", "429"], EXIT_PASS),
    (["--expect", "rate_limited"], EXIT_PASS),
    (["--expect-status", "503"], EXIT_FAIL),
])
def test_http_statuses_count_unless_expected(flags, code, capsys):
    with ScriptedTCPServer(http_answering(429, b'{"error":"rate_limited"}')) as server:
        got = main(["load", f"http://127.0.0.1:{server.port}/"] + HTTP_SHORT + flags)
    out = capsys.readouterr().out
    assert got == code, out
    if code == EXIT_FAIL:
        assert "status 429" in out.strip().splitlines()[-1]


def test_http_3xx_is_not_success(capsys):
    with ScriptedTCPServer(http_answering(302, b"")) as server:
        assert main(["load", f"http://127.0.0.1:{server.port}/"] + HTTP_SHORT) == EXIT_FAIL
    assert "status 302" in last_line(capsys)


@pytest.mark.parametrize("flags", [["--expect", "nonsense"], ["--expect-status", "99"],
                                   ["--expect-status", "x"], ["--min-success", "2"]])
def test_bad_expectations_are_usage_errors(flags, capsys):
    assert main(["load", "127.0.0.1:9"] + flags) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("beastnet load: ")


# -- ramps: the same rules per level ---------------------------------------------------


def test_ramp_against_nothing_fails_at_every_level_and_is_unreachable(capsys):
    code = main(["load", f"127.0.0.1:{free_port()}", "--levels", "20x2,40x4", "--keep-going",
                 "--success-through", "0", "--timeout-ms", "50", "-s", "2"])
    out = capsys.readouterr().out
    # Levels past --success-through only warn on success, but nothing answered fails.
    assert code == EXIT_UNREACHABLE and out.count(" FAIL") >= 2
    assert out.strip().splitlines()[-1].startswith("verdict: FAIL: level 1: nothing was answered")


def test_ramp_levels_honour_expect(capsys):
    with ScriptedUDPServer(replies=answering(b'{"error":"rate_limited"}')) as server:
        base = ["load", f"127.0.0.1:{server.port}", "--levels", "40x4,80x4", "-s", "4",
                "--timeout-ms", "1000"]
        assert main(base) == EXIT_FAIL
        capsys.readouterr()
        assert main(base + ["--expect", "rate_limited"]) == EXIT_PASS, capsys.readouterr().out


def test_judge_run_rules_on_plain_results():
    answered = LoadResult(sent=1000, received=1000)
    assert judge_run(answered) == ("pass", [])
    bodies = LoadResult(sent=1000, received=1000, error_replies=2, error_bodies={"busy": 2})
    verdict, reasons = judge_run(bodies)
    assert verdict == "fail" and reasons[0].startswith("success 99.800% < 99.900%: 2 busy")
    assert judge_run(bodies, expect=Expect.parse(["busy"]))[0] == "pass"
    # Transport errors count even when every request was answered in the end.
    noisy = LoadResult(sent=1000, received=1000, errors=5, errors_by_kind={"send_other": 5})
    assert judge_outcomes(noisy)[1] == ["5 transport errors in 1,000 requests: 5 send_other"]
    # A full socket buffer is backpressure: the request went out later.
    busy = LoadResult(sent=1000, received=1000, errors=500, errors_by_kind={"nobufs": 500})
    assert judge_outcomes(busy)[1] == []
    assert not unreachable(LoadResult(sent=10, lost=9, received=0, late=1))
    assert unreachable(LoadResult(sent=10, lost=10))


def test_ramp_criteria_use_the_run_rules():
    crit = Criteria(expect=Expect.parse(["not_found"]))
    r = LoadResult(sent=100, received=100, error_replies=100, error_bodies={"not_found": 100},
                   duration_s=1.0)
    assert crit.judge(Level(1, 100, 1), r)[0] != "fail"
    assert Criteria().judge(Level(1, 100, 1), r)[0] == "fail"
    rep = run_ramp([Level(1, 100, 1)], lambda lv: LoadResult(sent=100, lost=100))
    assert rep.verdict == "fail" and rep.unreachable

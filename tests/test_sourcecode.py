"""Source checks run as tests: the hot loops must be white in `cython -a`,
i.e. compile to C without a single Python C-API call."""
import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "beastnet"

# Every function a native thread runs per packet, per batch or per request.
HOT_FUNCTIONS = {
    "_limits.pxi": ["keyindex_lookup", "apikey_admit", "monotonic_ns"],
    "_udp.pxi": ["format_rate_limited", "udp_parse", "udp_reply", "udp_queue_miss", "udp_reader_recv",
                 "udp_reader_kernel_drops", "udp_reader_send", "udp_reader_serve", "udp_signal",
                 "udp_reader_main"],
    "_table.pxi": ["key_hash", "index_lookup", "table_lookup"],
    "_qsbr.pxi": ["qsbr_quiescent", "qsbr_online", "qsbr_offline", "qsbr_retire_epoch",
                  "qsbr_safe_epoch"],
    "_missq.pxi": ["missq_claim", "missq_set_request", "missq_publish", "missq_peek", "missq_release"],
    "_stats.pxi": ["counters_snapshot"],
    "_http_parse.pxi": ["ascii_ieq", "http_connection_tokens", "http_query_apikey",
                        "http_absolute_target", "http_head_prefix_bad", "http_parse_head"],
    "_http_conn.pxi": ["http_worker_date", "conn_out_pending", "conn_out_full", "conn_owned_add",
                       "conn_owned_sub", "conn_owned_claim", "conn_outq_grow", "conn_outq_push",
                       "conn_seg_release", "conn_outq_free", "conn_acked_bytes", "conn_io_error",
                       "conn_sendmsg", "conn_send_out", "conn_flush_iov", "conn_count_status",
                       "conn_iov_add", "conn_emit", "conn_emit_error", "conn_close",
                       "conn_keep_input"],
    "_http_route.pxi": ["http_key_valid", "http_is_route", "conn_queue", "conn_step",
                        "conn_request"],
    "_http_worker.pxi": ["http_now_ns", "conn_parse_all", "conn_set_events", "conn_finish",
                         "conn_run", "conn_on_readable", "conn_on_writable",
                         "http_worker_on_replies", "http_worker_pause_accept",
                         "http_worker_accept", "http_worker_linger", "http_worker_on_linger",
                         "http_worker_linger_tick", "http_worker_timeout",
                         "http_worker_write_window", "http_worker_tick",
                         "http_worker_resume_accept", "http_worker_begin_drain",
                         "http_worker_on_event", "http_worker_main"],
}

LINE_RE = re.compile(r'<pre class="cython line score-(\d+)"[^>]*>\+?<span class="">(\d+)</span>:')
DEF_RE = re.compile(r"^(cdef|cpdef|def)\b[^(]*?\b(\w+)\(")


def function_spans(source: str) -> dict[str, tuple[int, int]]:
    """1-based (first, last) line of each top-level function in a .pxi."""
    lines = source.splitlines()
    starts = [(i + 1, m.group(2)) for i, line in enumerate(lines) if (m := DEF_RE.match(line))]
    spans = {}
    for n, (first, name) in enumerate(starts):
        last = len(lines)
        for j in range(first, len(lines)):          # ends before the next top-level statement
            if lines[j] and not lines[j][0].isspace() and not lines[j].startswith("#"):
                last = j
                break
        spans[name] = (first, last)
    return spans


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    cython = shutil.which("cython")
    if cython is None:
        pytest.skip("cython executable not found")
    out = tmp_path_factory.mktemp("annotate")
    subprocess.run(
        [cython, "-3", "-a", "--directive", "boundscheck=False,wraparound=False,cdivision=True",
         "-I", str(SRC.parent), "-I", str(SRC / "includes"), str(SRC / "_core.pyx"),
         "-o", str(out / "_core.c")],
        check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("pxi", sorted(HOT_FUNCTIONS))
def test_hot_functions_are_white(annotations, pxi):
    page = (annotations / pxi.replace(".pxi", ".html")).read_text()
    scores = {int(line): int(score) for score, line in LINE_RE.findall(page)}
    spans = function_spans((SRC / pxi).read_text())
    yellow = []
    for func in HOT_FUNCTIONS[pxi]:
        assert func in spans, f"{func} not found in {pxi}"
        first, last = spans[func]
        yellow += [f"{pxi}:{n} ({func}) score {scores[n]}"
                   for n in range(first, last + 1) if scores.get(n, 0) > 0]
    assert not yellow, "Python interaction in hot code:\n" + "\n".join(yellow)


def test_no_gil_reacquired_in_native_code():
    for pxi in HOT_FUNCTIONS:
        assert "with gil" not in (SRC / pxi).read_text(), f"{pxi} takes the GIL"


@pytest.mark.timeout(300)
def test_python_layer_type_checks():
    """The public API ships py.typed and _core.pyi: keep them honest."""
    pytest.importorskip("mypy")
    import sys
    result = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports",
                             "--no-error-summary", str(SRC)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr

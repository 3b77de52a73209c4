"""Source checks run as tests: the hot loops must be white in `cython -a`,
i.e. compile to C without a single Python C-API call.  Under CI (env CI
set) a missing Cython fails instead of skipping."""
import pytest

import _background
from _annotate import SRC, annotated, yellow_lines

# Every function a native thread runs per packet, per batch or per request.
HOT_FUNCTIONS = {
    "_limits.pxi": ["digest_slot_hash", "keyindex_lookup", "keymiss_note", "apikey_lookup",
                    "apikey_over_cap", "gcra_take", "lease_take", "apikey_admit",
                    "apikey_decide", "monotonic_ns"],
    "_rrl.pxi": ["addr_is_v4mapped", "rrl_source", "rrl_check"],
    "_udp.pxi": ["format_rate_limited", "udp_parse", "udp_reply", "udp_too_large", "udp_error",
                 "udp_governor_sheds", "udp_queue_miss", "udp_stamp", "udp_reader_recv",
                 "udp_reader_kernel_drops", "udp_reader_send", "udp_reader_serve", "udp_signal",
                 "udp_reader_main"],
    "_table.pxi": ["key_hash", "index_lookup", "table_lookup", "entry_stale_body"],
    "_qsbr.pxi": ["qsbr_quiescent", "qsbr_online", "qsbr_offline", "qsbr_retire_epoch",
                  "qsbr_safe_epoch"],
    "_missq.pxi": ["missq_claim", "missq_set_request", "missq_publish", "missq_peek", "missq_release"],
    "_stats.pxi": ["counters_snapshot"],
    "_governor.pxi": ["governor_on", "governor_sheds", "governor_sample", "governor_take",
                      "governor_next_limit", "governor_close_window", "governor_apply"],
    "_http_parse.pxi": ["ascii_ieq", "http_connection_tokens", "http_query_apikey",
                        "http_absolute_target", "http_head_prefix_bad", "http_parse_head"],
    "_http_conn.pxi": ["http_worker_date", "conn_out_pending", "conn_out_full", "conn_owned_add",
                       "conn_owned_sub", "conn_owned_claim", "conn_outq_grow", "conn_outq_push",
                       "conn_seg_release", "conn_outq_free", "conn_acked_bytes", "conn_io_error",
                       "conn_sendmsg", "conn_send_out", "conn_flush_iov", "conn_count_status",
                       "conn_iov_add", "conn_emit", "conn_emit_piece", "conn_emit_error",
                       "conn_close", "conn_watch",
                       "conn_keep_input", "conn_recv"],
    "_tls.pxi": ["tls_on_alpn", "tls_on_info", "tls_conn_new", "tls_conn_free", "tls_fail",
                 "tls_write_pending", "tls_write", "tls_sendv", "tls_recv", "tls_handshake_done",
                 "tls_answer_plain_http", "tls_note_pending", "tls_drain_ready", "tls_on_handshake_event", "tls_is_client_hello",
                 "tls_ctx_release", "tls_pend_free"],
    "_http_route.pxi": ["http_key_valid", "http_usage_route", "http_is_route", "http_is_ops_path",
                        "http_governor_sheds", "conn_queue", "conn_step", "conn_refuse",
                        "cors_pick", "http_lookup", "batch_put", "batch_put_uint", "conn_batch",
                        "conn_request", "entry_served_body", "conn_health_stalled"],
    "_engine.pxi": ["monotonic_coarse_ns", "control_stalled"],
    "_ws.pxi": ["ws_reader_init", "ws_reader_free", "ws_load_u64", "utf8_check", "ws_unmask",
                "ws_close_code_valid", "ws_fail", "ws_msg_append", "ws_next", "ws_server_head"],
    "_ws_msg.pxi": ["json_ws", "json_hex4", "json_string", "json_skip", "json_skip_number",
                    "json_digits", "ws_symbols", "ws_parse_request"],
    "_ws_ring.pxi": ["ws_hub_publish", "ws_hubs_publish"],
    "_ws_deflate.pxi": ["thread_cpu_ns", "deflater_run", "ws_deflate_publication", "ext_space",
                        "ext_token", "ws_deflate_offer", "ws_deflate_offers",
                        "ws_inflate_message", "ws_message_inflate", "ws_echo_compressed"],
    "_ws_topics.pxi": ["ws_bucket", "ws_topic_find", "ws_topics_grow", "ws_topic_get",
                       "ws_topic_drop", "ws_current", "ws_mark_dirty", "ws_offer", "ws_fan_out",
                       "ws_resync", "ws_worker_on_publish", "ws_subscribe", "ws_sub_remove",
                       "ws_conn_find_sub"],
    "_ws_conn.pxi": ["ws_sends_z", "ws_frame_iov", "ws_frame_bytes", "ws_frame_written",
                     "ws_ctl_append", "ws_ctl_frame", "ws_send_close", "ws_count_close",
                     "ws_conn_flush", "ws_output_pending", "ws_conn_settle", "ws_flush_dirty",
                     "ws_write_symbols", "ws_reply_json", "ws_reply_error", "ws_auth_refuse",
                     "ws_on_auth", "ws_on_request",
                     "ws_conn_input", "ws_conn_discard", "ws_process", "ws_conn_on_event",
                     "ws_adopt_input", "ws_conn_free", "ws_dirty_unlink", "ws_sample_acks", "ws_close_stalled",
                     "ws_check_stalls",
                     "ws_path_kind", "ws_refuse", "ws_key_check", "ws_route",
                     "ws_conn_take_key", "ws_upgrade"],
    "_http_worker.pxi": ["http_now_ns", "conn_parse_all", "conn_set_events", "conn_finish",
                         "conn_run", "conn_on_readable", "conn_on_writable",
                         "http_worker_on_replies", "http_worker_pause_accept",
                         "http_worker_accept", "http_worker_linger", "http_worker_on_linger",
                         "http_worker_linger_tick", "http_worker_timeout",
                         "http_worker_write_window", "http_worker_tick",
                         "http_worker_resume_accept", "http_worker_begin_drain",
                         "http_worker_on_event", "http_worker_main"],
    "_push.pxi": ["push_run", "push_send"],
}


@pytest.fixture(scope="module")
def annotations():
    """`cython -a` of the engine, started when the session started."""
    return annotated("annotate-core")


@pytest.mark.parametrize("pxi", sorted(HOT_FUNCTIONS))
def test_hot_functions_are_white(annotations, pxi):
    yellow = yellow_lines(annotations, pxi, HOT_FUNCTIONS[pxi])
    assert not yellow, "Python interaction in hot code:\n" + "\n".join(yellow)


def test_the_annotation_reader_sees_python_interaction(annotations):
    """Control: a function that handles Python objects is yellow, so an empty
    result above means white code, not a reader that sees nothing."""
    assert yellow_lines(annotations, "_limits.pxi", ["apikey_to_bytes"])


def test_no_gil_reacquired_in_native_code():
    for pxi in HOT_FUNCTIONS:
        assert "with gil" not in (SRC / pxi).read_text(), f"{pxi} takes the GIL"


@pytest.mark.timeout(300)
def test_python_layer_type_checks():
    """The public API ships py.typed and _core.pyi: keep them honest."""
    pytest.importorskip("mypy")
    # mypy over src/, started when the session started (tests/_background.py)
    result = _background.result("mypy", timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr

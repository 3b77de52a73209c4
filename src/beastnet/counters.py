"""The one list of beastnet's counters: name, kind, unit and help text.

Every counter `UDPServer.stats()` and `HTTPServer.stats()` report is listed
here once.  The Prometheus families (`beastnet.metrics`) take their names,
types and HELP text from these lists, `docs/counters.md` is generated from
them (see `markdown`), and a test checks
that `UDP_COUNTERS` and `HTTP_COUNTERS` name the fields of the native
`bn_counters` and `bn_http_counters` structs, in their order.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["Counter", "tagged", "UDP_COUNTERS", "HTTP_COUNTERS", "MISS_PATH_COUNTERS",
           "WS_DEFLATE_COUNTERS", "USAGE_LOG_COUNTERS", "UDP_SERVER_GAUGES",
           "HTTP_SERVER_GAUGES", "PUSH_COUNTERS", "DATABASE_COUNTERS", "markdown"]


class Counter(NamedTuple):
    """One counter as stats() reports it."""

    name: str       #: the stats() key, and the Prometheus name after the prefix
    kind: str       #: "counter" (a running total) or "gauge" (a level)
    unit: str       #: what one step counts
    help: str       #: one sentence, for /metrics HELP and the docs
    #: Who shows it beside /metrics: "snapshot" (the cluster snapshot),
    #: "demo" (`beastnet demo`'s report), "admin" (the admin listener's
    #: /admin/stats totals), "rate:NAME" (the load report's server rate NAME).
    tags: frozenset[str] = frozenset()


def _table(text: str) -> tuple[Counter, ...]:
    # One counter a line: name, kind, unit, the help text, then its tags in
    # brackets, if any ("[snapshot demo]").
    out = []
    for line in text.strip().splitlines():
        name, kind, unit, help_text = line.split(None, 3)
        tags: frozenset[str] = frozenset()
        if help_text.endswith("]"):
            help_text, _, listed = help_text[:-1].rpartition(" [")
            tags = frozenset(listed.split())
        out.append(Counter(name, kind, unit, help_text, tags))
    return tuple(out)


def tagged(counters: tuple[Counter, ...], tag: str) -> tuple[str, ...]:
    """The names of `counters` that carry `tag`, in their order."""
    return tuple(c.name for c in counters if tag in c.tags)


# Both structs end alike: interrupted syscalls, then the API-key refusals
# (the same admission code runs in both engines).
_TAIL: tuple[Counter, ...] = _table("""
eintr             counter  calls        Syscalls interrupted by a signal and retried.
unauthorized      counter  requests     Requests refused for a missing, unknown or revoked API key (HTTP 401). [snapshot]
rate_limited      counter  requests     Requests refused by a key's rate limit (HTTP 429). [snapshot rate:rate_limited]
over_quota        counter  requests     Requests refused by a key's monthly cap (HTTP 429). [snapshot rate:rate_limited]
""")

#: Fields of bn_counters (includes/counters.h), one struct per UDP reader thread.
UDP_COUNTERS: tuple[Counter, ...] = _table("""
rx_packets        counter  datagrams    Datagrams received. [snapshot demo rate:rx]
rx_bytes          counter  bytes        Payload bytes received.
rx_batches        counter  calls        recvmmsg calls that returned datagrams. [demo]
tx_packets        counter  datagrams    Datagrams sent. [demo rate:tx]
tx_bytes          counter  bytes        Payload bytes sent.
tx_batches        counter  calls        sendmmsg calls that sent datagrams.
hits              counter  requests     Requests answered from the response table. [snapshot demo]
misses            counter  requests     Requests for keys the table does not hold. [snapshot demo]
not_found         counter  requests     Misses answered not_found without a handler.
bad_requests      counter  requests     Requests answered bad_request. [snapshot demo]
truncated         counter  datagrams    Datagrams longer than the read slot (answered bad_request).
empty             counter  datagrams    Empty datagrams (answered bad_request).
queued            counter  requests     Misses handed to the miss queue.
queue_drops       counter  requests     Misses answered busy because the miss queue was full. [snapshot demo rate:queue_drops]
send_errors       counter  datagrams    Replies the kernel refused. [snapshot demo]
send_enobufs      counter  datagrams    Replies refused for lack of buffer space (ENOBUFS, EAGAIN).
recv_errors       counter  calls        recvmmsg failures other than EAGAIN and EINTR.
kernel_drops      counter  datagrams    Datagrams the kernel dropped before the reader read them (SO_RXQ_OVFL). [snapshot demo rate:kernel_drops]
too_large         counter  requests     Hits whose answer does not fit in one datagram (answered too_large; also counted in hits).
unanswered        counter  requests     Unauthorized or malformed requests left without a reply (silent_refusals, the default with API keys).
rrl_dropped       counter  replies      Error replies withheld by response-rate limiting (nothing sent).
rrl_slipped       counter  replies      Error replies response-rate limiting sent as the bare tag, without a body (the slip).
stale_served      counter  requests     Hits answered with the entry's "stale":true variant because the control plane had not beaten for control_stall_s (also counted in hits). [snapshot]
shed_public       counter  requests     Misses of shed-first tiers (public, pro, no key) the governor answered {"error":"overloaded"}: the queued misses were at its adaptive limit. [snapshot]
shed_partner      counter  requests     Misses of shed-last keys (partners) the governor answered {"error":"overloaded"}: the queued misses were at its hard bound (adaptive_max_limit). [snapshot]
""") + _TAIL

#: Fields of bn_http_counters (includes/counters.h), one struct per HTTP worker thread.
HTTP_COUNTERS: tuple[Counter, ...] = _table("""
accepted          counter  connections  Connections accepted. [admin]
active            gauge    connections  Connections open now. [snapshot admin]
closed            counter  connections  Connections closed.
rejected          counter  connections  Connections refused with 503 busy over max_connections. [snapshot admin]
requests          counter  requests     Request heads received, malformed ones included. [snapshot admin rate:rx]
responses_2xx     counter  responses    Responses sent with a 2xx status. [rate:tx]
responses_3xx     counter  responses    Responses sent with a 3xx status. [rate:tx]
responses_4xx     counter  responses    Responses sent with a 4xx status. [rate:tx]
responses_5xx     counter  responses    Responses sent with a 5xx status. [rate:tx]
hits              counter  requests     Requests answered from the response table. [snapshot]
misses            counter  requests     Requests under the prefix for a key the table does not hold. [snapshot]
routed            counter  requests     Requests for /admin/, /metrics or /healthz.
queued            counter  requests     Misses and routes handed to the control plane.
queue_drops       counter  requests     Requests answered 503 busy because the miss queue was full. [snapshot rate:queue_drops]
replies           counter  responses    Control-plane replies written to their connection.
replies_dropped   counter  responses    Control-plane replies whose connection had gone.
parse_errors      counter  requests     Malformed or oversized request heads (400, 414, 431). [snapshot]
timeouts          counter  connections  Connections closed by a timeout (any kind).
header_timeouts   counter  connections  Connections closed because a request head took over header_timeout_s.
write_timeouts    counter  connections  Connections closed because the peer accepted under 1 KiB of queued output in write_timeout_s.
bytes_in          counter  bytes        Bytes read from connections.
bytes_out         counter  bytes        Bytes written to connections.
partial_writes    counter  calls        Gather writes the kernel took only in part (the rest was queued and sent later).
read_pauses       counter  events       Times a connection stopped being read because its unsent output passed max_output_bytes.
econnreset        counter  connections  Connections reset by the peer.
epipe             counter  connections  Writes to a connection the peer had closed.
io_errors         counter  calls        Other socket and epoll_ctl errors.
accept_errors     counter  calls        accept4 failures.
accept_emfile     counter  calls        accept4 failures for lack of descriptors or memory (accepting pauses for a while).
oom_closes        counter  connections  Connections closed for lack of memory.
epoll_waits       counter  calls        epoll_wait calls.
output_copied     gauge    bytes        Queued output the connections own: copies of Date tails and handler replies, segment arrays (entry bytes are referenced, not counted).
output_cap_closes counter  connections  Connections closed because their unsent output would pass max_copied_output_bytes (all connections of the server).
""") + _TAIL + _table("""
ws_upgrades              counter  connections  Connections upgraded to WebSocket (101 Switching Protocols).
ws_upgrade_refused       counter  requests     WebSocket upgrades refused (400 malformed, 426 version, 401/403/429 API key).
ws_active                gauge    connections  WebSocket connections open now. [snapshot]
ws_subscriptions         gauge    subscriptions  Subscriptions held now.
ws_subscriptions_refused counter  subscriptions  Subscriptions refused: the connection holds its limit.
ws_messages_in           counter  messages     Client messages read (feed requests, echo).
ws_request_errors        counter  messages     Client requests answered with an error message (bad JSON, unknown op, limits).
ws_pings                 counter  frames       Pings answered with a pong.
ws_publications          counter  updates      Table publications the worker drained from its ring.
ws_resyncs               counter  events       Ring overflows after which every topic was re-read from the tables.
ws_frames_out            counter  frames       Update and snapshot frames written whole. [snapshot]
ws_superseded            counter  updates      Publications replaced by a newer one of the same symbol before the worker fanned them out.
ws_conflated             counter  frames       Pending frames replaced by a newer one of the same symbol before they were written.
ws_slow_closes           counter  connections  Connections closed because their output made no progress for stall_timeout_s.
ws_reassembly_refused    counter  connections  Connections closed 1013 because their unfinished frames or fragmented messages would pass max_reassembly_bytes (all connections together).
ws_frames_compressed     counter  frames       Of ws_frames_out, the compressed (permessage-deflate) frames.
ws_bytes_saved           counter  bytes        Bytes those compressed frames were shorter than the plain ones.
ws_messages_inflated     counter  messages     Compressed client messages inflated (permessage-deflate).
ws_auths                 counter  connections  Streams opened without a key and admitted by a first-message {"op":"auth"}.
ws_auth_refused          counter  connections  Streams closed 1008 at first-message auth: a refused key, another message first, or past auth_timeout_s.
ws_close_normal          counter  connections  Closes with code 1000.
ws_close_going_away      counter  connections  Closes with code 1001 (the server stopping).
ws_close_protocol_error  counter  connections  Closes with code 1002 (a framing rule broken).
ws_close_invalid_data    counter  connections  Closes with code 1007 (invalid UTF-8).
ws_close_policy          counter  connections  Closes with code 1008 (slow consumers included).
ws_close_too_big         counter  connections  Closes with code 1009 (a frame or message over the limit).
ws_close_other           counter  connections  Closes with any other code (1003, 1011, 1013, a peer's own).
""") + _table("""
tls_handshakes           counter  connections  TLS handshakes completed.
tls_resumed              counter  connections  TLS handshakes that resumed a session (a ticket): no certificate, no key exchange signature.
tls_v13                  counter  connections  TLS handshakes that negotiated TLS 1.3 (the rest are TLS 1.2).
tls_handshake_timeouts   counter  connections  TLS connections closed because the handshake took over handshake_timeout_s (also in timeouts).
tls_handshake_errors     counter  connections  TLS handshakes refused by OpenSSL: junk, no shared version or cipher, a bad record.
tls_handshake_aborted    counter  connections  TLS connections the client closed or reset before the handshake finished.
tls_plain_http           counter  connections  Plain HTTP sent to the TLS port (answered 400 and closed, as nginx does).
tls_on_plain_port        counter  connections  TLS ClientHellos sent to a plain HTTP port (answered 400 and closed at once).
tls_renegotiations       counter  events       TLS 1.2 renegotiation attempts (refused with a no_renegotiation alert).
tls_errors               counter  connections  TLS connections closed by an OpenSSL error after the handshake (bad record, bad MAC).
tls_write_blocked        counter  calls        SSL_write calls the socket could not take whole (the rest waits for EPOLLOUT).
tls_ktls_send_on         counter  connections  TLS connections whose sending the kernel encrypts (kTLS).
tls_ktls_send_off        counter  connections  TLS connections encrypted in user space (no kTLS: the kernel lacks the tls ULP, or the cipher is not offloadable).
tls_active               gauge    connections  TLS connections open now, each holding an OpenSSL session (0 once all are closed).
tls_writes               counter  calls        SSL_write calls that completed at once, a TLS record each at most: a flush's pipelined responses share records, not one each.
""") + _table("""
kernel_queued            gauge    bytes        Bytes the kernel holds in the send queues of the open connections (SIOCOUTQ: unsent or unacknowledged), summed once a second; bounded per connection by notsent_lowat_bytes (and send_buffer_bytes).
stall_resets             counter  connections  Stalled connections (write_timeout_s, a WebSocket's stall_timeout_s) closed with a reset (SO_LINGER 0): their kernel queue is dropped at once, not kept through FIN-WAIT.
shed_public              counter  requests     Requests of shed-first tiers (public, pro, no key) the governor answered 503 overloaded: the queued work was at its adaptive limit. [snapshot]
shed_partner             counter  requests     Requests of shed-last keys (partners) the governor answered 503 overloaded: the queued work was at its hard bound (adaptive_max_limit). [snapshot]
stale_served             counter  requests     Hits answered with the entry's "stale":true variant because the control plane had not beaten for control_stall_s (also counted in hits). [snapshot]
health_stalled           counter  requests     /healthz requests the worker answered 503 stalled itself: the control plane had not beaten for control_stall_s. [snapshot]
uring_waits              counter  calls        io_uring_enter calls that submitted the queued requests and waited for completions (io="uring" workers; epoll_waits counts the epoll workers').
uring_enobufs            counter  events       Multishot receives ended with -ENOBUFS: the provided buffer ring was empty (re-armed).
uring_rearms             counter  calls        Multishot accepts, receives and polls re-armed after the kernel ended them (a completion without IORING_CQE_F_MORE).
uring_eagain             counter  events       io_uring completions with -EAGAIN or -EINTR (the request re-armed).
uring_sq_full            counter  events       Requests that found the io_uring submission queue full (what was queued was submitted early).
keyed_hits               counter  requests     Requests answered from the keyed replies: an answer the control plane rendered for that API key moments ago (serve's usage reports, kept report_max_age_s), admitted and counted like any request (also counted in hits).
""")

#: The control plane's miss dispatcher (one per server), in both servers' totals.
MISS_PATH_COUNTERS: tuple[Counter, ...] = _table("""
handler_calls     counter  calls        Miss handler calls.
handler_errors    counter  calls        Miss handler calls that raised (answered internal_error).
handler_inflight  gauge    calls        Asynchronous handler calls running now.
miss_replies      counter  responses    Replies sent by the control plane.
miss_cached       counter  answers      Handler answers published to the table (Answer(cache=True)).
miss_cache_refused counter answers      Handler answers not cached: the table was at its max_keys.
miss_send_errors  counter  responses    Control-plane replies the engine could not send.
""")

#: permessage-deflate on the publishing side: a table's writer deflates each
#: publication once (one value per server, from its engine's hub).
WS_DEFLATE_COUNTERS: tuple[Counter, ...] = _table("""
ws_deflated              counter  updates      Publications deflated once for the WebSocket feed (a compressed frame built beside the plain one).
ws_deflate_no_gain       counter  updates      Publications past compress_min_bytes that deflate did not shorten: sent plain.
ws_deflate_bytes_in      counter  bytes        Bodies of the deflated publications.
ws_deflate_bytes_out     counter  bytes        The same publications once deflated.
ws_deflate_cpu_ns        counter  nanoseconds  CPU time the table writers spent deflating (thread CPU clock), once per publication.
""")

#: `beastnet serve`'s usage log and usage reports (serve/usage_log.py, serve/reports.py).
USAGE_LOG_COUNTERS: tuple[Counter, ...] = _table("""
rows_queued        counter  rows         Usage rows queued for the usage log store (one per key, minute, protocol and route). [snapshot]
rows_written       counter  rows         Usage rows the usage log store took. [snapshot]
batch_flush_errors counter  batches      Usage log batches the store refused (each kept and retried, under its number). [snapshot]
batches_skipped    counter  batches      Retried usage log batches the store had applied already (their commit's answer was lost): not counted twice. [snapshot]
bg_drop            counter  rows         Usage rows dropped because the usage log queue was full (the store is down or slow). [snapshot]
lrs_requests       counter  requests     Usage report requests answered (public port and admin listener). [snapshot]
live_pushes        counter  pushes       Pushes of this node's pending usage counts to Redis (--redis; one pipelined call each). [snapshot]
live_errors        counter  calls        Pushes to or reads from Redis of pending usage counts that failed (pushes are sent again). [snapshot]
report_rereads     counter  reports      Usage reports that read again because a usage batch was stored between their read of the store and of the pending counts (it would have counted twice). [snapshot]
report_cache_hits  counter  reports      Usage reports whose stored part came from the last report of the same query (no usage batch stored since, by this node or, with --redis, any other). [snapshot]
usage_folds        counter  folds        PostgreSQL: background folds of appended usage rows (usage_log_fresh) into usage_log that moved rows. [snapshot]
usage_rows_folded  counter  rows         PostgreSQL: usage_log cells written by those folds. [snapshot]
usage_fold_errors  counter  folds        PostgreSQL: folds that failed (the appended rows stay where reports read them; folded at a later try). [snapshot]
usage_queue        gauge    rows         Usage rows waiting to be written.
""")

#: Levels of a server's set-up, one value per server (from stats(), not from a struct).
UDP_SERVER_GAUGES: tuple[Counter, ...] = _table("""
sockets           gauge    sockets      Reader sockets.
cpu_steering      gauge    flag         1 when CPU steering is active.
avg_batch_fill    gauge    datagrams    Datagrams per recvmmsg call.
""")
HTTP_SERVER_GAUGES: tuple[Counter, ...] = _table("""
threads           gauge    threads      HTTP worker threads.
""")

#: `UDPPusher` (webhook push over UDP): the fields of `bn_push_counters`, in order.
PUSH_COUNTERS: tuple[Counter, ...] = _table("""
datagrams         counter  datagrams    Datagrams handed to the kernel.
bytes             counter  bytes        Payload bytes handed to the kernel.
syscalls          counter  calls        sendmmsg calls that sent at least one datagram.
eagain            counter  datagrams    Datagrams dropped: the socket's send buffer was full (EAGAIN).
enobufs           counter  datagrams    Datagrams dropped: ENOBUFS.
send_errors       counter  datagrams    Datagrams dropped for any other error (EMSGSIZE, no route, ...).
eintr             counter  calls        sendmmsg calls interrupted by a signal and retried.
missing           counter  datagrams    Datagrams not built: the asset had no entry in the table.
ticks             counter  calls        push() calls (one per scheduler tick with UDP work).
""")


#: `serve --database` (serve/stores/postgres.py, serve/keycache.py): the
#: PostgreSQL pool and the keys' miss path, one value per node.
DATABASE_COUNTERS: tuple[Counter, ...] = _table("""
db_open           gauge    connections  PostgreSQL connections the pool holds open. [snapshot admin]
db_in_use         gauge    connections  Of those, the connections lent out now. [snapshot admin]
db_wait_count     counter  acquisitions Pool acquisitions that found no idle connection and waited for one. [snapshot admin]
db_queries        counter  statements   Statements sent to PostgreSQL (key reads, usage flushes, lookups, the delivery log). [snapshot]
key_misses_noted  counter  requests     Requests with a key the native table lacks, noted for the miss path (answered 401 at once).
key_misses_dropped counter requests     Of those, notes lost because the ring was full (the key is noted again on its next request).
key_lookups       counter  batches      Batches of unknown keys looked up (Redis, then PostgreSQL): at most one per key_miss_interval_s. [snapshot]
key_negative_hits counter  keys         Unknown keys not looked up again: found nowhere less than negative_key_ttl_s ago.
key_redis_hits    counter  keys         Unknown keys found in the cluster's Redis and added to the native table.
key_db_hits       counter  keys         Unknown keys found in PostgreSQL, added to the native table and written through to Redis.
key_not_found     counter  keys         Unknown keys found nowhere (or revoked, or of an unknown tier): cached as unknown.
key_lookup_errors counter  batches      Lookups that failed (the database or Redis unreachable); their keys are asked again when seen again.
""")


def markdown() -> str:
    """docs/counters.md: every counter, generated from the lists above."""
    sections = (
        ("UDP readers", "beastnet_udp", UDP_COUNTERS,
         "Per reader thread in `UDPServer.stats()['per_socket']`, summed in `['totals']`."),
        ("HTTP workers", "beastnet_http", HTTP_COUNTERS,
         "Per worker thread in `HTTPServer.stats()['per_thread']`, summed in `['totals']`."),
        ("Miss path (control plane)", "beastnet_udp / beastnet_http", MISS_PATH_COUNTERS,
         "In both servers' `['totals']`; absent from a UDP server without a handler."),
        ("WebSocket compression (publishing side)", "beastnet_http", WS_DEFLATE_COUNTERS,
         "In `HTTPServer.stats()['totals']` of a server with a WebSocket feed that "
         "compresses ([websocket.md](websocket.md#compression))."),
        ("Usage log and reports (`beastnet serve`)", "beastnet_usage_log", USAGE_LOG_COUNTERS,
         "From `/admin/stats` under `usage_log` ([postgres.md](postgres.md#the-usage-log)); "
         "the counters also in the cluster snapshot."),
        ("UDP server set-up", "beastnet_udp", UDP_SERVER_GAUGES,
         "From `UDPServer.stats()`: `sockets`, `steering['enabled']`, `avg_batch_fill`."),
        ("HTTP server set-up", "beastnet_http", HTTP_SERVER_GAUGES,
         "From `HTTPServer.stats()['threads']`."),
        ("PostgreSQL and the key miss path", "beastnet_keys", DATABASE_COUNTERS,
         "`beastnet serve --database` ([postgres.md](postgres.md)): in `/admin/stats` under "
         "`api_keys.database`, one value per node."),
        ("Webhook UDP pusher", "beastnet_webhook_udp", PUSH_COUNTERS,
         "From `UDPPusher.stats()`; `beastnet serve --webhooks` shows them in `/admin/stats` "
         "under `webhooks.udp` ([webhooks.md](webhooks.md))."),
    )
    out = [
        "# Counters",
        "",
        "<!-- Generated from src/beastnet/counters.py; tests/test_counters.py checks that",
        "it is current.  Regenerate with:",
        "PYTHONPATH=src python -c \"import beastnet.counters as c; print(c.markdown(), end='')\" > docs/counters.md",
        "-->",
        "",
        "Every counter `stats()` reports, and its Prometheus name on `/metrics`. Running",
        "totals are exposed as `<prefix>_<name>_total`, levels (gauges) as `<prefix>_<name>`;",
        "per-thread counters carry a `thread` label (the reader or worker index).",
        "Native threads count with relaxed atomic adds on their own cache lines; a",
        "snapshot reads each 64-bit field whole, so no value is torn.",
        "",
        "A counter's tags in `counters.py` (`snapshot`, `demo`, `admin`, `rate:NAME`) pick",
        "the subsets shown beside `/metrics`: the cluster snapshot ([cluster.md](cluster.md)),",
        "`beastnet demo`'s report, the admin listener's totals in `/admin/stats`, and the",
        "load report's server rates.",
    ]
    for title, prefix, counters, where in sections:
        out += ["", f"## {title}", "", f"Prefix `{prefix}`. {where}", "",
                "| name | type | unit | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{c.name}` | {c.kind} | {c.unit} | {c.help} |" for c in counters]
    return "\n".join(out) + "\n"

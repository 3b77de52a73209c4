"""Shared fixtures: hypothesis profiles, live servers on loopback, a UDP client,
and a leak check run around every test (fds and threads back to where they were).

Hypothesis profile: BEASTNET_HYPOTHESIS_PROFILE=ci (default) | dev | thorough,
registered and loaded here once for the whole session; test modules never
register their own.  Differential tests (a C parser against its Python
reference, no sockets) use `DIFFERENTIAL`, which asks for thousands of examples.
"""
from __future__ import annotations

import os

# NumPy (loaded by the load-generator tests) would start an OpenBLAS thread
# pool; the leak checks count native threads, so keep BLAS single-threaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib
import fcntl
import resource
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, settings

from beastnet import HTTPServer, ResponseTable, UDPServer
from beastnet.http_server import uring_unavailable
from support import UDPClient, native_thread_count, open_fds, require, thread_names
import _background

# Here, not in each module: one session-scoped definition, so one cluster
# per run rather than one per module importing it.
from pg_support import (_postgres_initialised, postgres, postgres_cluster,  # noqa: F401
                        postgres_log_since,
                        postgres_own)  # (fixtures)

# -- hypothesis profiles ----------------------------------------------------------

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, deadline=None, database=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.register_profile("dev", max_examples=150, deadline=None,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("BEASTNET_HYPOTHESIS_PROFILE", "ci"))

# Cheap and pure: 5000 examples take a few seconds, so CI runs them too.
DIFFERENTIAL = settings(max_examples=max(5000, 25 * settings.default.max_examples))


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = ipv6_loopback_available()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) here")

# -- leak check ------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _warm_process():
    """Create the process-wide resources a first server makes once and keeps
    (libuv's signal pipe, resolver state), so the per-test leak check only sees
    what a test itself leaves behind."""
    async def handler(req):
        return None
    table = ResponseTable({"warm": b"1"})
    # libuv's worker pool (getaddrinfo runs there) starts on first use and
    # lives as long as the process: the exchange feeds' clients resolve.
    import uvloop
    resolver_loop = uvloop.new_event_loop()
    resolver_loop.run_until_complete(resolver_loop.getaddrinfo("127.0.0.1", 80))
    resolver_loop.close()
    import support
    support.PERMANENT_NATIVE_THREADS = native_thread_count() - threading.active_count()
    for host in ["127.0.0.1"] + (["::1"] if HAS_IPV6 else []):
        with UDPServer(table, host, sockets=1, handler=handler) as srv:
            with UDPClient(srv.address) as c:
                assert c.request(b"warm") == b"1"
                assert c.request(b"cold") == b'{"error":"not_found"}'


def _snapshot() -> tuple:
    return open_fds(), threading.active_count(), thread_names(), native_thread_count()


def _assert_given_back(before: tuple, what: str) -> None:
    """fds, Python threads and native threads are back to `before`; a short
    grace period lets a joined thread leave /proc."""
    fds_before, threads_before, names_before, native_before = before
    deadline = time.monotonic() + 2.0
    while True:
        fds_after = open_fds()
        ok = (fds_after.keys() == fds_before.keys()
              and threading.active_count() == threads_before
              and native_thread_count() <= native_before)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    extra = {fd: target for fd, target in fds_after.items() if fd not in fds_before}
    gone = {fd: target for fd, target in fds_before.items() if fd not in fds_after}
    assert not extra and not gone, f"{what}: fds leaked {extra} / closed {gone}"
    assert threading.active_count() == threads_before, (
        f"{what}: Python threads before {names_before}, after {thread_names()}")
    # <=: a thread joined by Python may still be leaving the kernel when the
    # baseline is taken, so the count can drop; it must never grow.
    assert native_thread_count() <= native_before, f"{what}: native threads left running"


@pytest.fixture(scope="module", autouse=True)
def module_leak_check(request):
    """The same check around a whole module: module-scoped servers start
    before any test's snapshot and stop after the last, so only this sees
    whether their teardown gives everything back.  Autouse, it is set up
    before the module's own fixtures and torn down after them."""
    if request.node.get_closest_marker("no_leak_check"):
        yield
        return
    before = _snapshot()
    yield
    _assert_given_back(before, f"module {request.module.__name__}")


@pytest.fixture(autouse=True)
def leak_check(request):
    """Every test must give back the fds and threads (Python and native) it
    opened.  Teardown of other fixtures runs first (this one is set up first);
    stragglers get a short grace period, as a joined thread may take a moment
    to leave /proc."""
    before = _snapshot()
    yield
    if request.node.get_closest_marker("no_leak_check"):
        return
    _assert_given_back(before, request.node.nodeid)


# Under pytest-xdist the tests run in worker processes and each of their
# reports is replayed on the controller: the controller counts CI's skips and
# writes --time-report (from what each worker sends back when it ends).
_IS_XDIST_WORKER = False


def pytest_configure(config):
    global _IS_XDIST_WORKER
    _IS_XDIST_WORKER = hasattr(config, "workerinput")
    if not _IS_XDIST_WORKER:
        _background.configure()
    _open_locks()
    config.addinivalue_line("markers", "no_leak_check: skip the fd/thread leak check")
    config.addinivalue_line("markers", "postgres_own: the test stops, kills or restarts "
                            "PostgreSQL, so its `postgres` is a cluster of its own "
                            "(tests/pg_support.py)")
    config.addinivalue_line("markers", "needs_core: a clock is the subject and the machine "
                            "must not be busy: under pytest-xdist no other test runs "
                            "meanwhile (conftest._core_share)")
    config.addinivalue_line("markers", "requires(*names): real parts the test drives "
                            "(support.REAL_PARTS); missing, skip, or fail under CI")


def pytest_unconfigure(config):
    for lock in _LOCKS:
        lock.close()
    _LOCKS.clear()
    if not _IS_XDIST_WORKER:
        _background.stop()


# -- mypy and `cython -a` in the background (tests/_background.py) ----------------------

def pytest_collection_finish(session):
    # serial (under xdist the controller collects nothing); not for --collect-only
    if not _IS_XDIST_WORKER and not session.config.option.collectonly:
        _background.start_needed([item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist, on the controller: a worker collected `ids` (after
    -k/-m), before any test runs."""
    _background.start_needed(ids)


# -- both HTTP I/O backends ------------------------------------------------------

#: Test modules run once per HTTP I/O backend: every HTTPServer they build
#: without an explicit ``io=`` runs on it, and so do servers their
#: subprocesses build from BEASTNET_TEST_HTTP_IO (`beastnet serve` started by
#: test_serve.Serve gets ``--http-io``).  test_http_io.py chooses its
#: backends itself.
BOTH_HTTP_IO = ("test_http_server.py", "test_http_batch.py", "test_http_cors.py",
                "test_http_credentials.py", "test_http_fuzzing.py", "test_http_hardening.py",
                "test_http_review.py",
                # TLS and the WebSocket feed
                "test_tls_server.py", "test_serve_tls.py", "test_websocket.py",
                "test_websocket_autobahn.py", "test_ws_auth.py", "test_ws_deflate.py",
                "test_ws_fuzzing.py", "test_serve_stream.py")


def pytest_generate_tests(metafunc):
    # A test of pure functions (a parser, a frame builder: `io_free`) starts
    # no server, so a second backend would repeat it to the byte.
    if (os.path.basename(metafunc.definition.fspath) in BOTH_HTTP_IO
            and metafunc.definition.get_closest_marker("io_free") is None):
        metafunc.parametrize("http_io", ["epoll", "uring"], indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def http_io(request):
    """The HTTP I/O backend of this module's run (None outside BOTH_HTTP_IO).
    io_uring unavailable here fails under CI, else skips."""
    io = getattr(request, "param", None)
    if io != "uring":
        yield io
        return
    reason = uring_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"io_uring unavailable under CI: {reason}")
        pytest.skip(f"io_uring unavailable: {reason}")
    original = HTTPServer.__init__

    def on_backend(self, *args, **kwargs):
        kwargs.setdefault("io", io)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HTTPServer, "__init__", on_backend)
        patch.setenv("BEASTNET_TEST_HTTP_IO", io)
        yield io


# -- real parts, and no skip under CI ------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """support.require() for each real part a test is marked with, before
    its fixtures start anything."""
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            require(name)


_CI_SKIPS: list[str] = []


def _note_skip(report) -> None:
    if _IS_XDIST_WORKER:
        return                          # the controller counts it, once
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    if "slow" in getattr(report, "keywords", {}):
        return                          # the one skip CI allows: --run-slow's variants
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _CI_SKIPS.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that had a database on the shared PostgreSQL carries
    what the server logged meanwhile (a stalled statement's lock wait)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("call", "teardown"):
        logged = postgres_log_since(item)
        if logged is not None:
            report.sections.append(("PostgreSQL log since the test began", logged))


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus):
    """Under CI a skip is a failure (apart from `slow` tests): CI installs
    every real part, so a skip there means a check that never ran."""
    report = session.config.getoption("--time-report")
    if report and _IS_XDIST_WORKER:
        session.config.workeroutput["beastnet_times"] = _TIMES
    elif report:
        _write_time_report(report)
    if _CI_SKIPS and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _CI_SKIPS:
        terminalreporter.write_line(f"CI: {len(_CI_SKIPS)} test(s) skipped, and CI allows "
                                    f"no skip but the slow ones:", red=True)
        for line in _CI_SKIPS:
            terminalreporter.write_line(f"  {line}", red=True)


# -- tables, servers, clients ------------------------------------------------------

def small_body(key: str, n: int) -> bytes:
    return b'{"key":"%s","n":%d}' % (key.encode(), n)


SMALL_KEYS = {f"k{i}": small_body(f"k{i}", i) for i in range(10)}


@pytest.fixture
def small_table() -> ResponseTable:
    """Ten keys k0..k9 with bodies {"key":"kN","n":N}."""
    return ResponseTable(SMALL_KEYS)


@pytest.fixture
def make_server():
    """Factory: make_server(table, **UDPServer kwargs) -> a started server on
    127.0.0.1 port 0 (host= overrides), stopped at teardown."""
    servers: list[UDPServer] = []

    def factory(table: ResponseTable, host: str = "127.0.0.1", **kwargs) -> UDPServer:
        kwargs.setdefault("sockets", 2)
        srv = UDPServer(table, host, 0, **kwargs)
        servers.append(srv)
        return srv.start()

    yield factory
    for srv in servers:
        srv.stop()


@pytest.fixture
def server(make_server, small_table) -> UDPServer:
    """A running server (2 sockets, no handler) over `small_table`."""
    return make_server(small_table)


@pytest.fixture
def make_client():
    """Factory: make_client(address, timeout=2.0) -> UDPClient, closed at teardown."""
    clients: list[UDPClient] = []

    def factory(address: tuple, timeout: float = 2.0) -> UDPClient:
        c = UDPClient(address, timeout)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()


@pytest.fixture
def client(server, make_client) -> UDPClient:
    return make_client(server.address)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (or select them with -m slow)")
    parser.addoption("--time-report", metavar="FILE", default=None,
                     help="write per test file: wall time, this process's CPU and its "
                          "reaped children's CPU, and idle = wall - both (docs/testing.md)")


# -- needs_core: alone on the machine under pytest-xdist ----------------------------------

@contextlib.contextmanager
def _core_share(item):
    """Under pytest-xdist each test (set-up to teardown) holds a shared lock;
    one marked `needs_core` holds it exclusively, so no other worker runs a
    test meanwhile.  A turnstile taken before either keeps a waiting
    exclusive test from being starved by the shared ones.  Serial: nothing
    to share."""
    if not _LOCKS:
        yield
        return
    turnstile, cores = _LOCKS
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        needs_core = item.get_closest_marker("needs_core") is not None
        fcntl.flock(cores, fcntl.LOCK_EX if needs_core else fcntl.LOCK_SH)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(cores, fcntl.LOCK_UN)


# A worker's two lock files, open for its whole life: opened per test they
# would come and go around the leak checks' fd snapshots.
_LOCKS: list = []


def _open_locks() -> None:
    jobs_dir = os.environ.get(_background.ENV_DIR)
    if _IS_XDIST_WORKER and jobs_dir:
        _LOCKS[:] = [open(os.path.join(jobs_dir, name), "a")    # noqa: SIM115 (session-long)
                     for name in ("turnstile.lock", "cores.lock")]


# -- --time-report: where the wall time goes -------------------------------------------

# file -> [wall, self CPU, children CPU, tests]; setup and teardown included,
# so a module fixture's start and stop count against its file.
_TIMES: dict[str, list[float]] = {}


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


# tryfirst: the outermost wrapper, so a wait for the cores (_core_share) is
# not counted by pytest-timeout, whose timer starts inside it.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    with _core_share(item):
        if not item.config.getoption("--time-report"):
            yield
            return
        wall0, (me0, kids0) = time.monotonic(), _cpu()
        yield
        wall1, (me1, kids1) = time.monotonic(), _cpu()
    row = _TIMES.setdefault(item.location[0], [0.0, 0.0, 0.0, 0])
    row[0] += wall1 - wall0
    row[1] += me1 - me0
    row[2] += kids1 - kids0
    row[3] += 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, on the controller: a worker ended; add its files' times
    (a file runs on one worker under --dist loadfile/loadgroup, but a sum is
    right either way)."""
    for name, row in getattr(node, "workeroutput", {}).get("beastnet_times", {}).items():
        mine = _TIMES.setdefault(name, [0.0, 0.0, 0.0, 0])
        for i in range(4):
            mine[i] += row[i]


def _write_time_report(path: str) -> None:
    """A tab-separated table, slowest file first; idle is wall time no
    process of ours spent on a CPU (sleeps, timeouts, waits on daemons such
    as PostgreSQL's postmaster, whose CPU RUSAGE_CHILDREN never sees)."""
    rows = sorted(_TIMES.items(), key=lambda kv: -kv[1][0])
    total = [sum(r[i] for _, r in rows) for i in range(4)]
    with open(path, "w", encoding="utf-8") as out:
        out.write("file\ttests\twall_s\tself_cpu_s\tchildren_cpu_s\tidle_s\n")
        for name, (wall, me, kids, n) in rows + [("TOTAL", total)]:
            out.write(f"{name}\t{int(n)}\t{wall:.1f}\t{me:.1f}\t{kids:.1f}\t"
                      f"{max(0.0, wall - me - kids):.1f}\n")


# Under pytest-xdist (--dist loadfile --no-loadscope-reorder, pyproject's
# addopts) files are handed to the workers in collection order: the longest
# go first, so none starts late and runs on alone while the other workers
# have finished (longest first), and the two that wait for a background job
# (tests/_background.py) go last, when their job has had the run's length.
# Only the order changes; walls measured with --time-report, docs/testing.md.
_LONGEST_FIRST = [      # wall >= 20 s in a run on 4 workers, 2026-12-07 04:00 UTC (--time-report)
    "test_cli.py", "test_plan.py", "test_loadgen_agents.py", "test_cluster.py",
    "test_usage_log.py", "test_concurrency.py", "test_serve_postgres.py",
    "test_feeds_exchanges.py", "test_serve_tls.py", "test_loadgen_ws_stress.py",
    "test_serve_stream.py", "test_webhooks.py", "test_webhooks_push.py", "test_http_fuzzing.py",
    "test_ws_fuzzing.py", "test_loadgen_ws.py", "test_loadgen_udp.py", "test_serve_admin.py",
    "test_loadgen_tls.py", "test_http_server.py", "test_cluster_faults.py",
    "test_http_hardening.py", "test_usage_postgres_nodes.py", "test_websocket.py",
    "test_stores_postgres.py", "test_webhooks_cluster.py", "test_serve.py", "test_ci_rules.py",
    "test_protocol.py",
]
_WAIT_ON_BACKGROUND = ["test_sourcecode.py", "test_loadgen_sourcecheck.py"]


def _xdist_order(item) -> int:
    name = os.path.basename(item.location[0])
    if name in _LONGEST_FIRST:
        return _LONGEST_FIRST.index(name)
    return len(_LONGEST_FIRST) + 1 + (name in _WAIT_ON_BACKGROUND)


def pytest_collection_modifyitems(config, items):
    if _IS_XDIST_WORKER:                # every worker sorts alike, as xdist requires
        items.sort(key=_xdist_order)
    if config.getoption("--run-slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: use --run-slow or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

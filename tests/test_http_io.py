"""HTTPServer(io=...): the choice of the workers' I/O backend and the io_uring
detection behind it (build: liburing; run time: the kernel's io_uring, its
sysctl switch and the features the backend needs).

The io_uring worker loop itself does not exist yet, so "uring" must refuse
with a reason and "auto" must fall back to epoll and serve."""
from __future__ import annotations

import logging
import os

import pytest

from beastnet import HTTPServer, ResponseTable, _core
from beastnet.errors import ServerError
from beastnet.http_server import URING_WORKER_MISSING, choose_http_io
from http_helpers import BODIES, exchange, get


def test_liburing_is_built_in_under_ci():
    # scripts/system-deps --build installs liburing-dev; a CI build without it
    # would hide the backend's build path.
    if os.environ.get("CI") == "true":
        assert _core.URING_BUILT, "liburing (liburing-dev) missing from the CI build"
    if not _core.URING_BUILT:
        assert "built without liburing" in _core.uring_unavailable_reason()


def test_sysctl_io_uring_disabled_is_reported(tmp_path):
    disabled = tmp_path / "io_uring_disabled"
    disabled.write_text("2\n")
    reason = _core.uring_unavailable_reason(str(disabled))
    assert reason == "disabled by sysctl kernel.io_uring_disabled=2"


def test_probe_on_this_host_agrees_with_the_kernel_switch():
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            switch = int(f.read())
    except FileNotFoundError:
        switch = 0
    reason = _core.uring_unavailable_reason()
    if switch == 2:
        assert reason is not None and "io_uring_disabled=2" in reason
    elif _core.URING_BUILT and switch == 0 and int(os.uname().release.split(".")[0]) >= 6:
        # A built-in liburing on an enabled >= 6.0 kernel must probe clean;
        # a container's seccomp filter would show here as a named syscall error.
        assert reason is None or reason.startswith("io_uring_queue_init:"), reason


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="io must be one of epoll, uring, auto, got 'kqueue'"):
        HTTPServer(ResponseTable(), io="kqueue")


def test_uring_refuses_with_the_reason():
    expected = _core.uring_unavailable_reason() or URING_WORKER_MISSING
    with pytest.raises(ServerError) as err:
        HTTPServer(ResponseTable(), io="uring")
    assert str(err.value) == f'HTTPServer(io="uring"): io_uring unavailable: {expected}'


def test_sysctl_disabled_host_refuses_uring_and_auto_falls_back(monkeypatch, tmp_path):
    disabled = tmp_path / "io_uring_disabled"
    disabled.write_text("2\n")
    probe = _core.uring_unavailable_reason
    monkeypatch.setattr(_core, "uring_unavailable_reason", lambda: probe(str(disabled)))
    with pytest.raises(ServerError, match="io_uring_disabled=2"):
        choose_http_io("uring")
    assert choose_http_io("auto") == (
        "epoll", "io_uring unavailable: disabled by sysctl kernel.io_uring_disabled=2")


@pytest.mark.parametrize("io", ["epoll", "auto"])
def test_selected_backend_serves_keep_alive_and_pipelining(io, caplog):
    table = ResponseTable({k: v for k, v in BODIES.items()})
    caplog.set_level(logging.INFO, logger="beastnet")
    with HTTPServer(table, threads=1, io=io) as srv:
        assert srv.io == "epoll"
        if io == "auto":
            assert srv.io_fallback is not None and srv.io_fallback.startswith(
                "io_uring unavailable: ")
            assert any(srv.io_fallback in r.getMessage() for r in caplog.records)
        else:
            assert srv.io_fallback is None
        responses = exchange(srv, get("BTC") + get("ETH") + get("NOPE"), expect=3)
    assert [r.status for r in responses] == [200, 200, 404]
    assert responses[0].body == BODIES["BTC"]
    assert responses[1].body == BODIES["ETH"]

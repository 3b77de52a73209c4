"""Source checks of the load generator: every nogil function in its .pxi
files is white under `cython -a` (no Python C-API on the hot path).  The
functions are read from the source, and each must be found in the
annotation; under CI (env CI set) a missing Cython fails instead of skipping."""
from __future__ import annotations

import pytest

from _annotate import SRC, annotated, nogil_functions, yellow_lines

PIECES = ("loadgen/_run.pxi", "loadgen/_udp_load.pxi", "loadgen/_http_load.pxi", "loadgen/_hist.pxi",
          "loadgen/_ws_load.pxi", "loadgen/_tls.pxi", "loadgen/_tcp.pxi")


@pytest.mark.timeout(300)
def test_nogil_functions_are_white_under_cython_annotate():
    # `cython -a` of the load generator, started when the session started
    pages = annotated("annotate-loadgen")
    yellow = []
    checked = 0
    for piece in PIECES:
        names = nogil_functions((SRC / piece).read_text())
        assert names, f"no nogil function found in {piece}"
        yellow += yellow_lines(pages, piece, names)
        checked += len(names)
    # The pieces hold 44 nogil functions today: a reader that drops most of
    # them (a wrapped signature it cannot follow) must not pass.
    assert checked >= 40, checked
    assert not yellow, "\n".join(yellow)

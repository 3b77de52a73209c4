"""Source checks of the load generator (STYLE.md §6): every nogil function in
its .pxi files is white under `cython -a` (no Python C-API on the hot path)."""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PIECES = ("_run", "_udp_load", "_http_load", "_hist", "_ws_load")


@pytest.mark.timeout(120)
def test_nogil_functions_are_white_under_cython_annotate(tmp_path):
    if shutil.which("cython") is None:
        pytest.skip("cython not installed")
    out = tmp_path / "_native.c"
    # The directives of a release build (setup.py).
    subprocess.run(["cython", "-3", "-a", "-X", "cdivision=True", "-X", "boundscheck=False",
                    "-X", "wraparound=False", "-I", SRC, "-I", os.path.join(SRC, "beastnet", "includes"),
                    os.path.join(SRC, "beastnet", "loadgen", "_native.pyx"), "-o", str(out)],
                   check=True, capture_output=True, timeout=100)
    yellow = []
    nogil_functions = 0
    for piece in PIECES:
        text = (tmp_path / f"{piece}.html").read_text()
        current, in_nogil = "", False
        for score, code in re.findall(r'<pre class="cython line score-(\d+)"[^>]*>(.*?)</pre>',
                                      text, re.S):
            line = html.unescape(re.sub(r"<[^>]+>", "", code)).replace("\xa0", " ")
            if re.match(r"\+?\s*\d+:\s*(cdef|def|cpdef|class)\s", line):
                current = line.strip()
                in_nogil = bool(re.match(r"\+?\s*\d+:\s*cdef .*nogil:", line))
                nogil_functions += in_nogil
            if in_nogil and int(score) > 0:
                yellow.append(f"{piece}: {current[:60]} | {line.strip()}")
    assert nogil_functions > 30
    assert not yellow, "\n".join(yellow)

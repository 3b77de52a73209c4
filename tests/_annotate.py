"""`cython -a` for the source checks: run it, read its HTML back line by line,
and check that named functions compile without a Python C-API call.

The reader is strict on purpose: each annotated line must carry the text of
the same line of the .pxi, and every function asked about must be found, so a
change in Cython's HTML fails the check instead of passing it silently.
"""
from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "beastnet"

PRE_RE = re.compile(r'<pre class="cython line score-(\d+)"[^>]*>(.*?)</pre>', re.S)
NUMBERED_RE = re.compile(r"\A[+\u2212-]?\s*(\d+): ?(.*)\Z", re.S)
DEF_RE = re.compile(r"^(?:cdef|cpdef|def)\b[^(]*?\b(\w+)\(")


def _cython() -> Optional[list[str]]:
    """The Cython of the interpreter under test, else one on PATH, else None."""
    if importlib.util.find_spec("Cython") is not None:
        return [sys.executable, "-m", "cython"]
    exe = shutil.which("cython")
    return [exe] if exe else None


def cython_command() -> list[str]:
    """_cython(), or in CI (env CI set) a failed test when Cython is missing,
    a skipped one elsewhere."""
    command = _cython()
    if command is not None:
        return command
    if os.environ.get("CI"):
        pytest.fail("Cython is missing: the [test] extras install it, and CI must run this check")
    pytest.skip("Cython not installed (pip install -e '.[test]')")
    raise AssertionError("unreachable")


def annotate_argv(out_dir: Path, pyx: str, cython: list[str]) -> list[str]:
    """`cython -a` of `pyx` (relative to src/beastnet) with the directives of
    a release build; one HTML page per included .pxi lands in out_dir."""
    return cython + ["-3", "-a", "-X", "boundscheck=False", "-X", "wraparound=False",
                     "-X", "cdivision=True", "-I", str(SRC.parent), "-I", str(SRC / "includes"),
                     str(SRC / pyx), "-o", str(out_dir / (Path(pyx).stem + ".c"))]


def annotated(job: str) -> Path:
    """The directory of a `cython -a` the session started in the background
    (tests/_background.py: "annotate-core", "annotate-loadgen"), once it has
    ended well; run here if it was not started."""
    import _background
    cython_command()                    # no Cython: fail under CI, else skip
    done = _background.result(job, timeout=300)
    assert done.returncode == 0, f"cython -a failed (exit {done.returncode}):\n{done.stderr}"
    return done.out_dir


def annotated_lines(page: str) -> dict[int, tuple[int, str]]:
    """{line number: (score, source text)} from one `cython -a` page."""
    out: dict[int, tuple[int, str]] = {}
    for score, body in PRE_RE.findall(page):
        text = html.unescape(re.sub(r"<[^>]+>", "", body)).replace("\xa0", " ")
        m = NUMBERED_RE.match(text)
        assert m, f"cannot read an annotated line: {text[:80]!r}"
        out[int(m.group(1))] = (int(score), m.group(2))
    return out


def function_spans(source: str) -> dict[str, tuple[int, int, str]]:
    """{name: (first line, last line, header)} of each top-level function; the
    header runs to the line ending with ':' (signatures may wrap)."""
    lines = source.splitlines()
    spans: dict[str, tuple[int, int, str]] = {}
    for i, line in enumerate(lines):
        m = DEF_RE.match(line)
        if not m:
            continue
        head_end = i
        while not lines[head_end].split("#")[0].rstrip().endswith(":"):
            head_end += 1
        header = " ".join(part.strip() for part in lines[i:head_end + 1])
        last = len(lines)
        for j in range(head_end + 1, len(lines)):   # ends before the next top-level statement
            if lines[j] and not lines[j][0].isspace() and not lines[j].startswith("#"):
                last = j
                break
        spans[m.group(1)] = (i + 1, last, header)
    return spans


def nogil_functions(source: str) -> list[str]:
    return [name for name, (_, _, header) in function_spans(source).items()
            if re.search(r"\bnogil\s*:\s*(#.*)?$", header)]


def yellow_lines(out_dir: Path, pxi: str, functions: list[str]) -> list[str]:
    """Lines of `functions` in `pxi` (relative to src/beastnet) with a non-zero score.  Fails when a
    function is missing from the source or from the annotation, or when the
    annotation's text is not the source's."""
    source = (SRC / pxi).read_text()
    src_lines = source.splitlines()
    page = annotated_lines((out_dir / (Path(pxi).stem + ".html")).read_text())
    assert page, f"no annotated lines read from {pxi}'s page"
    spans = function_spans(source)
    yellow = []
    for func in functions:
        assert func in spans, f"{func} not found in {pxi}"
        first, last, _ = spans[func]
        for n in range(first, last + 1):
            assert n in page, f"{pxi}:{n} ({func}) missing from the annotation"
            score, text = page[n]
            assert text.rstrip() == src_lines[n - 1].rstrip(), (
                f"{pxi}:{n}: annotation shows {text!r}, source has {src_lines[n - 1]!r}")
            if score > 0:
                yellow.append(f"{pxi}:{n} ({func}) score {score}: {text.strip()}")
    return yellow

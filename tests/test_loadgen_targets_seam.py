"""The load generator decides by target kind in one place, `loadgen/targets.py`
(issue 20 item 5): before it, `cli/load.py`, ramps, reports and verdicts each
tested the scheme or mode by hand, so a new kind of target touched six files.

The check reads the source (AST) for a comparison of a string naming a kind
(`"udp"`, `"http"`, `"https"`, `"ws"`, `"wss"`) with anything named mode,
kind or scheme.  The WebSocket kind's own rooms know they are WebSocket and
are left out: `loadgen/ws/` and `beastnet ws` (`cli/ws.py`, a command for that
kind alone)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "beastnet"
KIND_WORDS = {"udp", "http", "https", "ws", "wss"}
ABOUT_KIND = ("mode", "kind", "scheme")

#: The load generator and the commands that drive it.
SCANNED = sorted([p for p in (SRC / "loadgen").rglob("*.py")
                  if p.name != "targets.py" and "ws" not in p.relative_to(SRC / "loadgen").parts[:-1]]
                 + [SRC / "cli" / f"{name}.py" for name in ("load", "report", "agent", "plan", "demo")])


def _kind_words(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & KIND_WORDS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_kind_words(e) for e in node.elts)) if node.elts else set()
    return set()


def _about_kind(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return any(word in text for word in ABOUT_KIND)


def branches_on_kind(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if any(_kind_words(o) for o in operands) and any(_about_kind(o) for o in operands
                                                         if not _kind_words(o)):
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("source,hits", [
    ('if r.get("mode") != "http": pass', 1),
    ('tls = u.scheme == "https"', 1),
    ('if target.kind.mode in ("ws", "wss"): pass', 1),
    ('if test.protocol == "udp": pass', 0),              # a plan's listener, not a target kind
    ('if kind.statuses: pass', 0),
])
def test_the_scan_sees_a_branch_on_kind(source, hits):
    assert len(branches_on_kind(source)) == hits


def test_the_scan_reads_the_load_generator():
    names = {p.name for p in SCANNED}
    assert {"load.py", "htmlreport.py", "report.py", "ramp.py", "verdict.py", "runner.py"} <= names


def test_nothing_outside_the_registry_branches_on_target_kind():
    found = [f"{p.relative_to(SRC)}:{line}: {code}" for p in SCANNED
             for line, code in branches_on_kind(p.read_text())]
    assert not found, "branch on target kind outside loadgen/targets.py:\n" + "\n".join(found)

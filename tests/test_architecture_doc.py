"""docs/architecture.md stays true: every path it names exists, every function
its request traces place in a file is defined there, and its "where does a
new X go" table answers each kind a reader asks about with real folders.

The doc is where a newcomer learns the tree; a renamed file or function that
it still names sends them looking for something that is not there."""
from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
SRC = ROOT / "src" / "beastnet"

#: Names the doc cites from other projects, not from this tree.
FOREIGN = {"loop.pyx"}          # uvloop's, cited for how its extension includes its handles

#: Folders that hold no source of ours (build output, caches, virtualenvs).
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".mypy_cache", ".pytest_cache", "node_modules"}

PATH_SUFFIXES = (".py", ".pyx", ".pxi", ".pxd", ".h", ".c", ".md", ".toml", ".service")

#: Each kind of addition the doc must place (issue 20 item 8), matched
#: against the first cell of the table's rows.
KINDS = ("feed", "store", "PostgreSQL store", "admin route", "counter", "load target",
         "protocol", "exchange adapter")


def _text() -> str:
    return DOC.read_text()


def _tree() -> tuple[set[str], set[str]]:
    """Every file and folder of the checkout, as paths relative to its root."""
    files: set[str] = set()
    dirs: set[str] = set()
    for top, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs
                      if d not in SKIP_DIRS and not d.endswith(".egg-info") and not d.startswith(".")]
        rel = os.path.relpath(top, ROOT)
        if rel != ".":
            dirs.add(rel.replace(os.sep, "/") + "/")
        for name in names:
            files.add(os.path.relpath(os.path.join(top, name), ROOT).replace(os.sep, "/"))
    return files, dirs


def _is_path(token: str) -> bool:
    """A backticked token that names a file or folder (not a URL route such
    as `/healthz`, a bare suffix such as `.pxi`, or a glob)."""
    if not re.fullmatch(r"[\w./-]+", token) or token.startswith((".", "/")):
        return False
    return "/" in token or token.endswith(PATH_SUFFIXES)


def _exists(token: str, files: set[str], dirs: set[str]) -> bool:
    """The doc names files relative to the folder it is describing (`feeds/base.py`
    in the serve row), so a name is real when some path of the tree ends with it."""
    pool = dirs if token.endswith("/") else files
    return any(p == token or p.endswith("/" + token) for p in pool)


def _paths(text: str) -> list[str]:
    return sorted({t for t in re.findall(r"`([^`\n]+)`", text) if _is_path(t)} - FOREIGN)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]                                     # the header row


def test_every_path_named_exists():
    files, dirs = _tree()
    paths = _paths(_text())
    assert len(paths) > 40, paths                       # the parser still finds the doc's paths
    missing = [p for p in paths if not _exists(p, files, dirs)]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_engine_piece_is_in_the_files_table():
    pieces = {p.name for p in SRC.glob("*.pxi")}
    table = _section(_text(), "## The engine's files")
    listed = set(re.findall(r"^\| `([\w.]+\.pxi)` \|", table, re.M))
    assert pieces - listed == set(), f"engine pieces missing from the files table: {pieces - listed}"
    assert listed - pieces == set(), f"files table lists pieces that are gone: {listed - pieces}"


def test_every_command_group_is_in_the_cli_row():
    row = next(line for line in _text().splitlines() if line.startswith("| `src/beastnet/cli/`"))
    named = set(re.findall(r"`(\w+)`", row))
    modules = {p.stem for p in (SRC / "cli").glob("*.py") if not p.stem.startswith("_")}
    assert modules - named == set(), f"command groups missing from the cli row: {modules - named}"


def test_traced_functions_are_defined_where_the_doc_says():
    text = _text()
    for trace in ("**One WebSocket publication**", "**One TLS request**", "**An HTTP request**",
                  "**A UDP datagram**"):
        assert trace in text, f"docs/architecture.md no longer traces {trace}"
    pairs = re.findall(r"`(\w+)` \(`(_\w+\.pxi)`", text)
    assert len(pairs) >= 12, pairs
    wrong = []
    for func, piece in pairs:
        source = (SRC / piece).read_text()
        if not re.search(rf"^\s*(?:cdef|cpdef|def)\b[^\n]*\b{func}\s*\(", source, re.M):
            wrong.append(f"{func} ({piece})")
    assert not wrong, f"functions the doc places in a file that does not define them: {wrong}"


def test_traced_names_exist_in_the_source():
    """Every function, struct or class name in backticks (snake_case with an
    underscore, or CamelCase) is still spelled somewhere in the source."""
    source = "".join(p.read_text(errors="replace") for p in SRC.rglob("*")
                     if p.is_file() and p.suffix in (".py", ".pyx", ".pxi", ".pxd", ".h"))
    gone = set()
    for token in re.findall(r"`([^`\n]+)`", _text()):
        if _is_path(token) or token.startswith("net.core."):     # sysctl names
            continue
        for name in re.findall(r"[A-Za-z_]\w*", token):
            named = "_" in name.strip("_") or re.match(r"[A-Z][a-z]+[A-Z]", name)
            if named and name not in source:
                gone.add(name)
    assert not gone, f"names in docs/architecture.md that the source no longer has: {sorted(gone)}"


def test_where_a_new_x_goes_names_existing_folders():
    files, dirs = _tree()
    rows = _table_rows(_section(_text(), "## Where a new X goes"))
    for kind in KINDS:
        assert any(kind.lower() in row[0].lower() for row in rows), f"no row for a new {kind}"
    for first, goes_in, registered in rows:
        places = [t for t in re.findall(r"`([^`\n]+)`", goes_in) if _is_path(t) and "/" in t]
        assert places, f"row {first!r} names no folder or file path"
        for place in places:
            assert _exists(place, files, dirs), f"row {first!r}: {place} does not exist"
        assert registered, f"row {first!r} does not say how it is registered"

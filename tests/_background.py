"""Long source checks started in the background when the session starts.

mypy over src/ and `cython -a` of the engine and of the load generator are
each tens of seconds of one process's CPU with nothing else to wait on.  Run
in their turn, the suite waits for them; started here as soon as collection
has ended, they run while the tests that sit waiting on sockets, stalls and
timers run, and the test that needs one waits for its end and asserts on
its exit status and output, as it did when it ran the command itself.

The command, its checks and its failure are the test's: only when it runs
moves.  A job starts only if a test that needs it was collected and not
deselected.  The controller starts and stops them (the only process when
serial; under pytest-xdist, when a worker reports what it collected, so
once per session, and workers may end before the test that needs a job
does); the output lands in files of a directory every worker inherits
through the environment, read by whichever process runs the test.  A test
that finds no job started (run some way the hooks did not see) runs the
command itself.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

SRC = Path(__file__).resolve().parent.parent / "src" / "beastnet"
ENV_DIR = "BEASTNET_TEST_JOBS_DIR"


@dataclass(frozen=True)
class Job:
    name: str
    # given the job's own directory; None: a tool is missing, so the test
    # runs it itself, to fail (CI) or skip with its own message
    argv: Callable[[Path], Optional[list[str]]]
    consumers: tuple[str, ...]              # node ids (prefixes) of the tests that need it


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path                           # the job's directory, for files it wrote


def _annotate_argv(pyx: str) -> Callable[[Path], Optional[list[str]]]:
    def argv(out_dir: Path) -> Optional[list[str]]:
        from _annotate import _cython, annotate_argv
        cython = _cython()
        return None if cython is None else annotate_argv(out_dir, pyx, cython)
    return argv


def _mypy_argv(_out_dir: Path) -> Optional[list[str]]:
    if importlib.util.find_spec("mypy") is None:
        return None
    return [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-error-summary",
            str(SRC)]


JOBS = {job.name: job for job in [
    Job("mypy", _mypy_argv,
        ("tests/test_sourcecode.py::test_python_layer_type_checks",)),
    Job("annotate-core", _annotate_argv("_core.pyx"),
        ("tests/test_sourcecode.py::test_hot_functions_are_white",
         "tests/test_sourcecode.py::test_the_annotation_reader_sees_python_interaction")),
    Job("annotate-loadgen", _annotate_argv("loadgen/_native.pyx"),
        ("tests/test_loadgen_sourcecheck.py::test_nogil_functions_are_white_under_cython_annotate",)),
]}

_started: list[subprocess.Popen] = []
_made_dir: Optional[str] = None


def configure() -> None:
    """On the controller (or the only process): make the directory the jobs
    write to, inherited by xdist's workers through the environment."""
    global _made_dir
    # Always a new one: a pytest this session runs as a subprocess (the CI
    # rules' probe) inherits the variable and must not share our jobs or locks.
    _made_dir = tempfile.mkdtemp(prefix="beastnet-test-jobs-")
    os.environ[ENV_DIR] = _made_dir


def start_needed(nodeids: list[str]) -> None:
    """Start each job a collected test needs and is not started yet."""
    base = os.environ.get(ENV_DIR)
    if not base:
        return
    for job in JOBS.values():
        if not any(n.startswith(c) for n in nodeids for c in job.consumers):
            continue
        job_dir = Path(base) / job.name
        argv = job.argv(job_dir)
        if argv is None:
            continue
        try:
            job_dir.mkdir()                 # each worker reports the same tests: once
        except FileExistsError:
            continue
        # The shell writes the exit status last, through a rename, so a
        # reader that sees `rc` sees the whole output.
        script = ('"$@" >"$D/stdout" 2>"$D/stderr"; echo $? >"$D/rc.tmp"; '
                  'mv "$D/rc.tmp" "$D/rc"')
        try:
            _started.append(subprocess.Popen(
                ["sh", "-c", script, "sh", *argv], env={**os.environ, "D": str(job_dir)},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
        except OSError as e:            # the test fails with this, rather than wait
            (job_dir / "stdout").write_text("")
            (job_dir / "stderr").write_text(f"could not start {argv[0]}: {e}")
            (job_dir / "rc").write_text("127")


def result(name: str, timeout: float) -> Done:
    """The job's outcome: waited for if it was started, else run here and now."""
    job = JOBS[name]
    base = os.environ.get(ENV_DIR)
    job_dir = Path(base) / name if base else None
    if job_dir is None or not job_dir.is_dir():
        out_dir = Path(tempfile.mkdtemp(prefix=f"beastnet-{name}-"))
        argv = job.argv(out_dir)
        assert argv is not None, f"{name}: its tool is missing (the test checks that first)"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return Done(done.returncode, done.stdout, done.stderr, out_dir)
    rc_file = job_dir / "rc"
    deadline = time.monotonic() + timeout
    while not rc_file.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"background job {name} not done after {timeout}s")
        time.sleep(0.05)
    return Done(int(rc_file.read_text()), (job_dir / "stdout").read_text(),
                (job_dir / "stderr").read_text(), job_dir)


def stop() -> None:
    """At the session's end: stop what is still running (a run cut short
    or a deselected consumer), reap it, and remove the directory."""
    for proc in _started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    _started.clear()
    if _made_dir:
        shutil.rmtree(_made_dir, ignore_errors=True)

"""The suite's own rules for CI (.ci/run sets CI=true): a missing real part
fails the test with one line naming it, and any skip but a `slow` test's fails
the run.  Checked on tests/_ci_probe.py in a pytest subprocess whose PATH lacks
redis-server."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "_ci_probe.py")


def run_probe(ci: bool, *args: str) -> tuple[int, str]:
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "redis-server")))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = path
    if ci:
        env["CI"] = "true"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           *args, PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("workers", ["0", "2"])
def test_under_ci_a_missing_real_part_fails_naming_it_and_a_skip_fails_the_run(workers) -> None:
    """Serial and under pytest-xdist (the skips are counted on the controller,
    from the reports the workers send back)."""
    rc, out = run_probe(True, "-n", workers)
    assert rc == 1, out
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert failed == ["ERROR tests/_ci_probe.py::test_drives_redis - Failed: redis-server is not "
                      "installed (.ci/run installs it with scripts/system-deps)"], out
    assert "CI: 1 test(s) skipped, and CI allows no skip but the slow ones:" in out, out
    assert "_ci_probe.py::test_skips_for_no_real_reason: this machine lacks something" in out
    assert "test_slow_variant:" not in out                  # a slow test may skip
    assert "2 skipped, 1 error" in out, out


def test_on_a_developer_machine_the_same_tests_skip_with_their_reasons() -> None:
    rc, out = run_probe(False, "-n", "0")
    assert rc == 0, out
    assert ("redis-server is not installed (.ci/run installs it with scripts/system-deps)"
            in out), out
    assert "3 skipped" in out and "CI:" not in out, out


def test_under_ci_a_skip_alone_fails_the_run() -> None:
    rc, out = run_probe(True, "-n", "0", "-k", "not drives_redis")
    assert rc == 1, out
    assert "2 skipped, 1 deselected" in out and "error" not in out, out
    assert "_ci_probe.py::test_skips_for_no_real_reason: this machine lacks something" in out

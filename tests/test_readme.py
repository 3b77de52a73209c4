"""The README's first screen and CI agree: CI runs the README's test command
exactly, after the same system-package script the README's commands start with."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block, "the README opens with a bash block of the two commands"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_a_main_job_command_and_a_test_command():
    main_job, tests = _first_commands()
    assert main_job.startswith("scripts/system-deps --build && ") and "beastnet demo" in main_job
    assert tests.startswith("scripts/system-deps && ") and tests.endswith("python -m pytest")


def test_ci_runs_the_readmes_test_command_after_the_same_system_packages():
    _, tests = _first_commands()
    setup, command = tests.split(" && ", 1)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup in ci
    # CI may add pytest's reporting flags (-rfEs) to the README's command, nothing else
    runs = [i for i, line in enumerate(ci)
            if line == command or line.startswith(command + " -r")]
    assert runs, f"no line of .ci/run runs {command!r}"
    assert ci.index(setup) < runs[0]
    assert (ROOT / "scripts" / "system-deps").stat().st_mode & 0o111, "the script is executable"

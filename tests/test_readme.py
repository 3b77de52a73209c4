"""The README's first screen and CI agree: CI runs the README's test command
exactly, after the same system-package script the README's commands start with.
The README's Python example runs as shown."""
from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from support import free_port, wait_for

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


def _python_example() -> tuple[str, str, str]:
    """The README's Python example, the command that queries it and its output."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    shown = re.search(r"```\n\$ (python3 -c .*?)\n(.*?)\n```", readme, re.S)
    assert code and shown, "the README shows a Python example and a query of it"
    return code.group(1), shown.group(1), shown.group(2)


def test_the_python_example_serves_until_ctrl_c_on_a_port_serve_leaves_free(tmp_path):
    """Issue 21: the example shared serve's UDP port 9000 without a word and
    exited at once ("...")."""
    from beastnet.serve.config import ServeConfig

    code, query, output = _python_example()
    port = re.search(r'UDPServer\(table, "127.0.0.1", (\d+)', code)
    assert port, "the example binds a fixed loopback port"
    cfg = ServeConfig()
    assert int(port.group(1)) not in (cfg.udp_port, cfg.http_port, cfg.admin_port)
    assert "serve_forever()" in code and "..." not in code
    free = str(free_port(kind=socket.SOCK_DGRAM))
    script = tmp_path / "example.py"
    script.write_text(code.replace(port.group(1), free))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        query_argv = shlex.split(query.replace(port.group(1), free))

        def answered() -> Optional[str]:
            run = subprocess.run(query_argv, capture_output=True, text=True, timeout=10)
            return run.stdout.strip() if run.returncode == 0 else None

        assert wait_for(answered, timeout=20.0, interval=0.1) == output
        assert proc.poll() is None, "the example keeps serving"
        proc.send_signal(signal.SIGINT)             # Ctrl-C
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

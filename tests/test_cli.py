"""The `beastnet` command as a new user meets it: --help, --version, a wrong
flag, a bad value, a dead target.  Never a traceback: one clear line and a
documented exit status."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from beastnet.serve.config import PROFILES, ServeConfig

SRC = str(Path(__file__).resolve().parent.parent / "src")

pytestmark = pytest.mark.timeout(60)


def beastnet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "beastnet", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def serve_parser() -> argparse.ArgumentParser:
    from beastnet.cli.serve import add_serve_command

    top = argparse.ArgumentParser(prog="beastnet")
    add_serve_command(top.add_subparsers())
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]
    raise AssertionError("no serve parser")


def test_version():
    from beastnet import __version__

    proc = beastnet("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"beastnet {__version__}"


def _flags_without_default(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                missing += _flags_without_default(child, f"{path} {name}")
        elif action.option_strings and action.dest != "help" \
                and "(default: " not in (action.help or ""):
            missing.append(f"{path} {action.option_strings[0]}")
    return missing


def test_every_flag_has_help_with_its_default():
    from beastnet.cli.demo import add_demo_command
    from beastnet.cli.keys import add_keys_command
    from beastnet.cli.stats import add_stats_command

    top = argparse.ArgumentParser(prog="beastnet")
    sub = top.add_subparsers()
    for add in (add_demo_command, add_keys_command, add_stats_command):
        add(sub)
    missing = _flags_without_default(serve_parser(), "serve") + _flags_without_default(top, "")
    assert not missing, f"flags without help or default: {missing}"


def test_serve_help_shows_builtin_defaults_profiles_and_exit_statuses():
    proc = beastnet("serve", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())        # argparse wraps lines
    defaults = ServeConfig()
    for flag, value in (("--udp-port PORT", defaults.udp_port),
                        ("--http-port PORT", defaults.http_port),
                        ("--batch N", defaults.batch), ("--backlog N", defaults.backlog),
                        ("--max-connections N", defaults.max_connections)):
        assert f"{flag} " in text and f"(default: {value})" in text
    for name, settings in PROFILES.items():
        assert f"{name}: " in text
        for setting in settings:
            assert f"{setting}=" in text, (name, setting)
    assert "1 could not start: a port in use or another bind failure" in text
    assert "2 bad flag, config file or setting" in text
    assert "DESIGN" not in proc.stdout and "STYLE" not in proc.stdout


def test_help_of_every_command_cites_no_design_document():
    for command in ("demo", "keys", "serve", "stats"):
        proc = beastnet(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "DESIGN" not in proc.stdout and "§" not in proc.stdout, command


def test_demo_and_serve_name_the_feed_rate_alike():
    from beastnet.cli.demo import add_demo_command

    top = argparse.ArgumentParser(prog="beastnet")
    sub = top.add_subparsers()
    add_demo_command(sub)
    args = top.parse_args(["demo", "--feed-rounds-per-s", "20"])
    assert args.feed_rounds_per_s == 20.0
    assert "--feed-rounds-per-s" in {a.option_strings[0] for a in serve_parser()._actions
                                     if a.option_strings}


@pytest.mark.parametrize("args,flag", [
    (["serve", "--sockets", "0"], "--sockets must be 1..256, got 0"),
    (["serve", "--replay", "/nonexistent.jsonl"], "--replay '/nonexistent.jsonl' is not a file"),
    (["serve", "--http-threads", "999"], "--http-threads must be 1..256, got 999"),
    (["serve", "--recv-buffer-bytes", "1"], "--recv-buffer-bytes must be 4096..1 GiB"),
    (["serve", "--admin-remote"], "--admin-remote needs an admin_token"),
    (["demo", "--sockets", "0"], "--sockets must be >= 1, got 0"),
    (["demo", "--feed-rounds-per-s", "0"], "--feed-rounds-per-s must be > 0"),
    (["stats", "--url", "127.0.0.1:8080"], "--url must look like http://HOST:PORT"),
    (["stats", "--watch", "-1"], "--watch must be > 0 seconds"),
])
def test_errors_name_the_flag_the_user_typed(args, flag):
    proc = beastnet(*args)
    assert proc.returncode == 2
    assert flag in one_error_line(proc)


def test_a_config_file_error_names_the_setting(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("udp_sockets = 0\n")
    proc = beastnet("serve", "--config", str(config))
    assert proc.returncode == 2
    assert "udp_sockets must be 1..256" in one_error_line(proc)


def test_a_wrong_flag_gets_the_command_s_usage_and_exit_2():
    proc = beastnet("serve", "--nope")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: beastnet serve")
    assert "unrecognized arguments: --nope" in one_error_line(proc)


def test_a_dead_target_is_one_line_and_exit_1():
    with socket.socket() as s:                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = beastnet("stats", "--url", f"http://127.0.0.1:{port}")
    assert proc.returncode == 1
    assert one_error_line(proc).endswith(f"http://127.0.0.1:{port}: connection refused")


def test_an_unknown_host_is_one_line_and_exit_1():
    proc = beastnet("serve", "--profile", "dev", "--http-host", "no-such-host.invalid",
                    "--udp-port", "0", "--http-port", "0")
    assert proc.returncode == 1
    assert "HTTP host 'no-such-host.invalid'" in one_error_line(proc)


def test_docs_say_what_each_profile_sets():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "serve.md").read_text()
    for name, settings in PROFILES.items():
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{name}`")]
        assert len(rows) == 1, name
        for setting in settings:
            assert setting in rows[0], (name, setting)


def test_a_bind_failure_is_one_line_and_exit_1():
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails with EADDRNOTAVAIL.
    proc = beastnet("serve", "--profile", "dev", "--udp-host", "192.0.2.1", "--udp-port", "0",
                    "--http-port", "0")
    assert proc.returncode == 1
    assert "192.0.2.1" in one_error_line(proc)


def test_keys_add_refuses_a_key_too_short_to_be_secret(tmp_path):
    db = tmp_path / "k.db"
    proc = beastnet("keys", "--db", str(db), "add", "--key", "abc")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "at least 16 characters" in line and "guessed" in line
    listed = beastnet("keys", "--db", str(db), "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"
    made = beastnet("keys", "--db", str(db), "add", "--key", "sixteen-chars-ok")
    assert made.returncode == 0 and made.stdout.strip() == "sixteen-chars-ok"

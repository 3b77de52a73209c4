"""The `beastnet` command and the price server as a new user meets them:
--help, --version, a wrong flag, a bad value, a dead target, an occupied port,
an empty key store.  Never a traceback: one clear line and a documented exit
status.  Servers are real `beastnet serve` processes on loopback."""
from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import orjson
import pytest

from beastnet.serve.config import PROFILES, ServeConfig
import test_serve
from conftest import needs_ipv6
from test_serve import add_key
from support import free_port

# Subprocesses run the package under test (installed or in place), no path games.
ENV = dict(os.environ)

pytestmark = pytest.mark.timeout(90)

serve = test_serve.serve       # the fixture: `beastnet serve` processes, killed after the test


def beastnet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the `beastnet` command to completion, as the interpreter under test has it."""
    return subprocess.run([sys.executable, "-m", "beastnet", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, prefix: Optional[str] = None,
                   alone: bool = False) -> str:
    """The one `error:` line on stderr (argparse adds a usage line unless
    `alone`), never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and (not alone or len(lines) == 1), proc.stderr
    assert prefix is None or errors[0].startswith(prefix), proc.stderr
    return errors[0]


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
    from beastnet.cli.agent import add_agent_command
    from beastnet.cli.demo import add_demo_command
    from beastnet.cli.keys import add_keys_command
    from beastnet.cli.report import add_report_command
    from beastnet.cli.stats import add_stats_command

    top = argparse.ArgumentParser(prog="beastnet")
    sub = top.add_subparsers()
    for add in (add_agent_command, add_demo_command, add_keys_command, add_report_command, add_stats_command):
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
    for command in ("demo", "keys", "report", "serve", "stats"):
        proc = beastnet(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "DESIGN" not in proc.stdout and "§" not in proc.stdout, command


def test_a_command_that_sends_no_load_does_not_import_numpy():
    """Every `beastnet` process builds the whole parser; `agent --help`'s
    default lease once came from the agents' module, which pulls the load
    generator's histograms and NumPy: 60 ms of CPU at every start, `serve`'s
    included.  `serve` parses and checks its flags without it."""
    code = ("import sys\nfrom beastnet.cli import main\n"
            "try:\n    main(['serve', '--udp-port', 'x'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'beastnet.loadgen._driver') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert "--udp-port" in proc.stderr, proc.stderr         # the flag was parsed and refused
    assert proc.stdout.strip() == "[]", proc.stdout


def test_webhooks_help_relates_webhook_tiers_to_key_tiers_in_plain_words():
    """Issue 21: the help said "the seeds' X-Webhook-Signature" (a word from
    the project's history, not the user's) and never said how a webhook tier
    relates to an API-key tier."""
    from beastnet.serve.keys import DEFAULT_TIERS
    from beastnet.serve.webhooks import DEFAULT_WEBHOOK_TIERS

    top = beastnet("webhooks", "--help")
    add = beastnet("webhooks", "add", "--help")
    assert top.returncode == 0 and add.returncode == 0, top.stderr + add.stderr
    text = " ".join((top.stdout + add.stdout).split())          # argparse wraps lines
    assert "seed" not in text.lower(), text
    for tier in DEFAULT_WEBHOOK_TIERS.values():
        assert f"{tier.name} {tier.interval_s:g} s/{tier.max_assets}" in text, tier
    assert "separate from API-key tiers" in text, text
    assert all(name in text for name in DEFAULT_TIERS), text
    assert "needs no API key" in text and "count against no key's limits" in text, text
    assert "a webhook tier (not an API-key tier)" in text, text


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
    (["serve", "--http-io", "kqueue"], "--http-io must be one of epoll, uring, auto, got 'kqueue'"),
    (["serve", "--recv-buffer-bytes", "1"], "--recv-buffer-bytes must be 4096..1 GiB"),
    (["serve", "--admin-host", "0.0.0.0"], "--admin-host 0.0.0.0 is not a loopback address"),
    (["serve", "--admin-token-file", "/nonexistent"], "--admin-token-file /nonexistent: No such"),
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


def test_an_option_before_the_command_is_named_not_called_a_missing_command():
    proc = beastnet("--nope", "serve")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "unrecognized option '--nope'" in line and "required" not in line


def test_a_dead_target_is_one_line_and_exit_1():
    port = free_port()                          # a port nobody listens on
    proc = beastnet("stats", "--url", f"http://127.0.0.1:{port}")
    assert proc.returncode == 1
    assert one_error_line(proc).endswith(f"http://127.0.0.1:{port}: connection refused")


def test_an_unknown_host_is_one_line_and_exit_1():
    proc = beastnet("serve", "--profile", "dev", "--http-host", "no-such-host.invalid",
                    "--udp-port", "0", "--http-port", "0", "--admin-port", "0")
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
                    "--http-port", "0", "--admin-port", "0")
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


# -- the price server as a newcomer meets it (real servers on loopback) ---------------

def test_admin_token_as_a_bearer_token(serve, tmp_path):
    token = "t0k3n-long-enough-123"
    (tmp_path / "token").write_text(token + "\n")
    server = serve("--no-keys", "--admin-token-file", str(tmp_path / "token"))
    try:
        status = server.admin("GET", "/admin/stats", {"Authorization": f"Bearer {token}"})[0]
        wrong = server.admin("GET", "/admin/stats", {"Authorization": "Bearer wrong-token-0123"})[0]
    finally:
        assert server.terminate() == 0
    assert wrong == 401
    assert status == 200


@pytest.mark.parametrize("occupied,what", [("udp", "UDP"), ("http", "HTTP"), ("admin", "admin")])
def test_a_second_server_on_an_occupied_port_is_refused(serve, tmp_path, occupied, what):
    db = tmp_path / "keys.db"
    add_key(db, "partner", "partner-key-12345")
    first = serve("--keystore", str(db))
    ports = {"udp": str(first.udp[1]), "http": str(first.http_port),
             "admin": str(first.admin_port)}
    free = {"udp": "0", "http": "0", "admin": "0"}
    free[occupied] = ports[occupied]
    second = beastnet("serve", "--profile", "dev", "--no-keys", "--udp-port", free["udp"],
                      "--http-port", free["http"], "--admin-port", free["admin"], timeout=20)
    line = one_error_line(second, "beastnet serve: error:", alone=True)
    assert second.returncode == 1
    assert f"{what} port {ports[occupied]}" in line and "in use" in line
    assert f"--{occupied}-port" in line and "--share-ports" in line
    # The key-enforcing server still answers every request itself.
    assert b'"asset":"BTC"' in first.udp_ask(b"@1 BTC partner-key-12345")
    assert first.udp_unanswered(b"@2 BTC")
    assert first.http("GET", "/v1/BTC")[0] == 401
    assert first.terminate() == 0


def test_every_occupied_port_is_named_at_once(serve):
    """A second server started with the first's ports hears of all three in
    one error, and that it needs ports of its own (one retry is enough)."""
    first = serve("--no-keys")
    second = beastnet("serve", "--profile", "dev", "--no-keys", "--udp-port", str(first.udp[1]),
                      "--http-port", str(first.http_port), "--admin-port", str(first.admin_port),
                      timeout=20)
    line = one_error_line(second, "beastnet serve: error:", alone=True)
    assert second.returncode == 1
    for what, port, flag in (("UDP", first.udp[1], "--udp-port"),
                             ("HTTP", first.http_port, "--http-port"),
                             ("admin", first.admin_port, "--admin-port")):
        assert f"{what} port {port}" in line and flag in line
    assert "docs/cluster.md" in line
    assert first.terminate() == 0


def test_share_ports_joins_the_group_of_a_running_server(serve):
    first = serve("--no-keys")
    second = serve("--no-keys", "--share-ports", "--udp-port", str(first.udp[1]),
                   "--http-port", str(first.http_port))
    assert second.ready["udp_port"] == first.udp[1]
    assert second.ready["http_port"] == first.http_port
    assert b'"asset":"BTC"' in first.udp_ask(b"BTC")
    assert second.terminate() == 0 and first.terminate() == 0


def test_an_empty_production_key_store_says_what_to_do(serve, tmp_path):
    db = tmp_path / "beastnet-keys.db"
    server = serve("--profile", "production", "--sockets", "1", "--http-threads", "1",
                   "--keystore", str(db), "--feed", "sim")
    output = server.output()
    assert db.exists() and f"created key store {db}" in output
    ready = server.ready["msg"]
    assert "0 active" in ready and "every request is refused" in ready
    assert f"beastnet keys --db {db} add" in ready and "--profile dev" in ready
    assert server.udp_unanswered(b"BTC")
    assert server.terminate() == 0


def test_the_server_logs_key_changes_it_picks_up(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "partner", "partner-key-12345")
    server = serve("--keystore", str(db))
    add_key(db, "public", "public-key-123456")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "changed: 2 active keys" not in server.output():
        time.sleep(0.05)
    assert f"key store {db} changed: 2 active keys" in server.output()
    assert b'"asset"' in server.udp_ask(b"BTC public-key-123456")
    assert server.terminate() == 0


def test_keys_of_an_unknown_tier_are_reported_at_start(serve, tmp_path):
    db = tmp_path / "keys.db"
    gold = '[tiers.gold]\nqps = 50\n'
    (tmp_path / "gold.toml").write_text(gold)
    made = beastnet("keys", "--db", str(db), "--config", str(tmp_path / "gold.toml"), "add",
                    "--tier", "gold", "--key", "gold-key-12345678")
    assert made.returncode == 0, made.stderr
    server = serve("--keystore", str(db))             # no [tiers.gold] here
    assert "1 active key(s) of unknown tier 'gold' are refused" in server.output()
    assert "[tiers.gold]" in server.output()
    assert server.udp_unanswered(b"BTC gold-key-12345678")
    assert server.terminate() == 0
    unknown = beastnet("keys", "--db", str(db), "add", "--tier", "gold")
    assert unknown.returncode == 2
    assert "unknown tier 'gold'" in one_error_line(unknown, "beastnet keys: error:", alone=True)


@pytest.mark.parametrize("tier,message", [
    ("qps = -5", "tier 'public': qps must be >= 0, got -5"),
    ("burst = 0", "tier 'public': burst must be >= 1, got 0"),
    ('qps = "fast"', "tier 'public': qps must be a number"),
    ("monthly_cap = 1.5", "tier 'public': monthly_cap must be an integer"),
])
def test_bad_tier_limits_stop_the_server_before_it_binds(tmp_path, tier, message):
    db = tmp_path / "keys.db"
    add_key(db, "public", "public-key-123456")
    config = tmp_path / "tiers.toml"
    config.write_text(f"[tiers.public]\n{tier}\n")
    proc = beastnet("serve", "--profile", "dev", "--udp-port", "0", "--http-port", "0",
                    "--admin-port", "0",
                    "--keystore", str(db), "--config", str(config), timeout=20)
    assert proc.returncode == 2
    assert message in one_error_line(proc, "beastnet serve: error:", alone=True)


@needs_ipv6
def test_the_ready_line_writes_ipv6_addresses_in_brackets(serve):
    server = serve("--no-keys", "--udp-host", "::1", "--http-host", "::1")
    port = server.ready["udp_port"]
    assert f"udp://[::1]:{port}" in server.ready["msg"]
    assert f"http://[::1]:{server.http_port}" in server.ready["msg"]
    assert server.terminate() == 0


def test_stats_text_shows_refused_requests_and_assets(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "public", "public-key-123456")
    server = serve("--keystore", str(db))
    for _ in range(3):
        assert server.udp_unanswered(b"BTC not-a-key-at-all")
    assert server.http("GET", "/v1/BTC")[0] == 401
    shown = beastnet("stats", "--url", f"http://127.0.0.1:{server.admin_port}")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "assets 150" in lines[0] and "keys_in_table" not in shown.stdout
    refused = [line for line in lines if "refused:" in line]
    assert len(refused) == 2                          # one line each for UDP and HTTP
    assert "unauthorized 3" in refused[0] and "unauthorized 1" in refused[1]
    assert "rate limited 0" in refused[0]
    assert server.terminate() == 0


def test_stats_watch_into_a_closed_pipe_ends_quietly(serve):
    server = serve("--no-keys")
    watch = subprocess.Popen([sys.executable, "-m", "beastnet", "stats", "--url",
                              f"http://127.0.0.1:{server.admin_port}", "--watch", "0.05"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert watch.stdout is not None and watch.stderr is not None
    assert watch.stdout.readline().startswith(b"uptime")       # as `| head -1` reads
    watch.stdout.close()
    try:
        status = watch.wait(15)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    err = watch.stderr.read().decode()
    watch.stderr.close()
    assert status == 0 and err == ""
    assert server.terminate() == 0


def test_sigterm_during_start_up_is_a_clean_drain(tmp_path):
    """A signal that arrives before the ready line waits for serve_forever()
    instead of killing the process half-started."""
    import signal

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")                        # no prices: start() waits its 5 s warm-up
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                                 "--udp-port", "0", "--http-port", "0", "--admin-port", "0",
                                 "--replay", str(empty),
                                 "--keystore", str(tmp_path / "k.db")],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.monotonic() + 20
            while b"0 active keys" not in log_path.read_bytes():    # start() is under way
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert status == 0, output
    assert '"event":"ready"' in output and "stopped cleanly" in output


def test_one_control_plane_loop_serves_both_protocols(tmp_path):
    import threading

    from beastnet.serve.config import load_config
    from beastnet.serve.service import PriceService

    cfg = load_config(profile="dev", overrides={"udp_port": 0, "http_port": 0, "admin_port": 0})
    before = {t.ident for t in threading.enumerate()}
    with PriceService(cfg) as service:
        new = [t.name for t in threading.enumerate() if t.ident not in before]
        loops = [name for name in new if "control" in name or name == "beastnet-service"]
        assert loops == ["beastnet-service"], new
        assert service.admin is not None
        conn = http.client.HTTPConnection(*service.admin.address[:2], timeout=5)
        conn.request("GET", "/admin/stats")
        response = conn.getresponse()
        assert response.status == 200 and orjson.loads(response.read())["assets"] == 150
        conn.close()


def test_the_service_uses_only_the_public_api():
    """beastnet.serve is built like any other service: it imports names from
    `beastnet` (and renders with `beastnet.metrics`), never engine modules or
    private attributes of engine objects."""
    import ast

    import beastnet.metrics

    allowed = {"beastnet", "beastnet.metrics", "beastnet.counters"}     # public: docs/api.md
    serve_dir = Path(__file__).resolve().parent.parent / "src" / "beastnet" / "serve"
    problems = []
    for path in sorted(serve_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("beastnet") and name not in allowed \
                        and not name.startswith("beastnet.serve"):
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                problems.append(f"{path.name}:{node.lineno} uses private .{node.attr}")
    assert not problems, "\n".join(problems)
    # The engine's metrics module knows nothing of the price server.
    assert not hasattr(beastnet.metrics, "feed_families")
    assert not hasattr(beastnet.metrics, "key_families")

"""A throw-away PostgreSQL cluster on this host: `initdb` and `pg_ctl` (Debian's
`postgresql` package; scripts/system-deps installs it) in a directory of
its own, listening on a free loopback port, stopped with `pg_ctl stop` on
the postmaster it started.  `beastnet plan local` runs its nodes on one,
and the tests' `postgres` fixture (tests/pg_support.py) is one.

PostgreSQL refuses to run as root: as root, the server runs as `nobody`
(the directory is made theirs).  Authentication is `trust` on loopback and
the data is not fsynced: a test or benchmark database, never production.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

__all__ = ["LocalPostgres", "LocalPostgresError", "find_pg_tool"]

SUPERUSER = "beastnet"
START_TIMEOUT_S = 30


class LocalPostgresError(RuntimeError):
    """initdb or pg_ctl is missing or failed; the message is one line."""


def find_pg_tool(name: str) -> Optional[str]:
    """`name` (initdb, pg_ctl) on PATH or where Debian installs it off PATH
    (/usr/lib/postgresql/VERSION/bin, the newest first), else None."""
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as(user: Optional[pwd.struct_passwd]) -> dict[str, Any]:
    """subprocess arguments that run the child as `user` (PostgreSQL refuses
    root).  subprocess switches user and groups in its C child code, between
    fork and exec; a preexec_fn would run Python there, which can deadlock
    in a process with threads (a lock held by another thread at the fork:
    seen as an initdb that never started, in a test process whose usage-log
    threads were running)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class LocalPostgres:
    """One PostgreSQL cluster of its own: `start()` runs initdb (once) and
    the server, `stop()` stops it, `close()` also removes its directory
    unless `keep` (what a plan report's log path points into).  `dsn`
    reaches its `postgres` database as the superuser `beastnet`.

    `directory`: where the data, socket and log go (a new temporary one by
    default).  Missing binaries raise LocalPostgresError at construction."""

    def __init__(self, directory: Optional[str] = None, *, keep: bool = False,
                 initdb: Optional[str] = None, pg_ctl: Optional[str] = None) -> None:
        found_initdb = initdb or find_pg_tool("initdb")
        found_pg_ctl = pg_ctl or find_pg_tool("pg_ctl")
        if not found_initdb or not found_pg_ctl:
            missing = [n for n, p in (("initdb", found_initdb), ("pg_ctl", found_pg_ctl))
                       if not p]
            raise LocalPostgresError(f"{' and '.join(missing)} not installed (PostgreSQL's "
                                     f"server binaries; scripts/system-deps installs them)")
        self.initdb: str = found_initdb
        self.pg_ctl: str = found_pg_ctl
        self.dir = Path(directory or tempfile.mkdtemp(prefix="beastnet-pg-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, *args: str) -> None:
        try:
            run = subprocess.run(list(args), capture_output=True, text=True,
                                 timeout=START_TIMEOUT_S + 30, **_as(self.user),
                                 cwd=self.dir)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalPostgresError(f"{Path(args[0]).name}: {exc}") from None
        if run.returncode != 0:
            detail = " ".join((run.stderr or run.stdout).split())[:300]
            raise LocalPostgresError(f"{Path(args[0]).name} failed: {detail}")

    def start(self) -> "LocalPostgres":
        """initdb if the data directory is new, then start the server and
        wait until it accepts connections.  Returns self."""
        if not (self.data / "PG_VERSION").exists():
            self._run(self.initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--no-instructions")
        if self.user is not None and not self.log.exists():
            self.log.touch()
            os.chown(self.log, self.user.pw_uid, self.user.pw_gid)
        # Unix sockets in our directory (not /var/run/postgresql, which may
        # not exist or not be ours); fsync off: a throw-away database;
        # a lock waited on past deadlock_timeout (1 s) is logged, with its
        # holder: a stalled statement in a test or benchmark says why.
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(START_TIMEOUT_S),
                  "-o", f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F -c log_lock_waits=on",
                  "start")
        return self

    @property
    def pid(self) -> Optional[int]:
        """The postmaster's PID (postmaster.pid's first line), None when stopped."""
        try:
            with open(self.data / "postmaster.pid", encoding="ascii") as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`pg_ctl stop -m mode`, waiting for it); nothing
        when it is not running."""
        if self.running():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def version(self) -> str:
        """`postgres --version`'s line, from the binaries next to initdb."""
        postgres = os.path.join(os.path.dirname(os.path.realpath(self.initdb)), "postgres")
        try:
            done = subprocess.run([postgres, "--version"], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        return (done.stdout.strip().splitlines() or ["unknown"])[0]

    def describe(self) -> dict[str, Any]:
        return {"name": "postgres", "pid": self.pid, "ports": {"tcp": self.port},
                "log": str(self.log), "dsn": self.dsn}

    def close(self) -> None:
        """Stop the server; then remove the directory unless `keep`."""
        try:
            self.stop()
        finally:
            if not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

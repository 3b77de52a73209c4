"""A real PostgreSQL for the tests: `initdb` and `pg_ctl` (Debian's
`postgresql`, scripts/system-deps installs it) in a fresh temporary
directory, listening on a free loopback port, stopped by `pg_ctl stop` on
the postmaster this fixture started.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs
as `nobody` (the data directory is made theirs).  Missing binaries skip on a
developer's machine and fail under CI, naming them (support.require)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from support import free_port, require


def _as(user: Optional[pwd.struct_passwd]) -> Optional[Callable[[], None]]:
    if user is None:
        return None

    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)
    return drop


class PostgresServer:
    """One PostgreSQL cluster of its own; `dsn` reaches its `postgres`
    database as the superuser `beastnet` (trust authentication on loopback)."""

    def __init__(self) -> None:
        self.initdb = require("initdb")
        self.pg_ctl = require("pg_ctl")
        self.dir = Path(tempfile.mkdtemp(prefix="beastnet-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.dsn = f"postgresql://beastnet@127.0.0.1:{self.port}/postgres"
        self._run(self.initdb, "-D", str(self.data), "-U", "beastnet", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        self.start()

    def _run(self, *args: str) -> None:
        run = subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                             preexec_fn=_as(self.user), cwd=self.dir)
        if run.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {run.stderr.strip()}")

    def start(self) -> None:
        # Unix sockets in our directory (not /var/run/postgresql, which may
        # not exist or not be ours); fsync off: a test database.
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                  "-t", "30", "-o", f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F", "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str) -> Any:
        """One statement's first value, through asyncpg."""
        import asyncio

        import asyncpg

        async def run() -> Any:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()
        return asyncio.run(run())

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres():
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()

"""A real PostgreSQL for the tests: beastnet.serve.stores.pg_local's
`LocalPostgres` (initdb and pg_ctl in a fresh temporary directory, on a free
loopback port, as `nobody` when the tests run as root; `beastnet plan local`
runs the same class), stopped by `pg_ctl stop` on the postmaster a fixture
started.  Missing binaries skip on a developer's machine and fail under CI,
naming them (support.require).

`postgres` is a fresh database of its own per test, on one cluster the
whole session shares (`postgres_cluster`): initdb and a server start cost
2-5 s, a CREATE DATABASE a few tens of milliseconds.  A test that stops,
kills or restarts PostgreSQL is marked `@pytest.mark.postgres_own`, and its
`postgres` is then a cluster of its own (as is the `postgres_own`
fixture); the shared database refuses stop() and start() to say so."""
from __future__ import annotations

import asyncio
import itertools
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from beastnet.serve.stores.pg_local import LocalPostgres
from support import require


class PostgresServer(LocalPostgres):
    """One PostgreSQL cluster of its own, started; `dsn` reaches its
    `postgres` database as the superuser `beastnet` (trust authentication
    on loopback)."""

    def __init__(self, data_from: Optional[Path] = None) -> None:
        """`data_from`: a stopped cluster's data directory to copy instead
        of running initdb (a second or more of CPU each time)."""
        super().__init__(initdb=require("initdb"), pg_ctl=require("pg_ctl"))
        if data_from is not None:
            # -a keeps the owner (nobody when the tests run as root) and the
            # 0700 PostgreSQL insists on.
            subprocess.run(["cp", "-a", str(data_from), str(self.data)], check=True,
                           timeout=60)
        self.start()

    def psql(self, sql: str) -> Any:
        return fetchval(self.dsn, sql)


def fetchval(dsn: str, sql: str) -> Any:
    """One statement's first value, through asyncpg."""
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()
    return asyncio.run(run())


_DATABASE_NUMBERS = itertools.count(1)


class SharedDatabase:
    """A database of its own on the session's cluster: `dsn` and `port` as
    PostgresServer's, `psql`.  Stopping or restarting would take the
    cluster from every later test, so those refuse: mark the test
    `postgres_own`."""

    def __init__(self, cluster: PostgresServer) -> None:
        self.cluster = cluster
        self.port = cluster.port
        self.name = f"test_{next(_DATABASE_NUMBERS)}"
        # template0: nothing a previous test left in template1 comes along.
        fetchval(cluster.dsn, f"CREATE DATABASE {self.name} TEMPLATE template0")
        self.dsn = cluster.dsn.rsplit("/", 1)[0] + "/" + self.name

    def psql(self, sql: str) -> Any:
        return fetchval(self.dsn, sql)

    def drop(self) -> None:
        # FORCE: connections a failed test left open must not keep it.
        fetchval(self.cluster.dsn, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def _own_cluster_only(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("this test stops or restarts PostgreSQL, which would stop the "
                             "cluster the session shares: mark it @pytest.mark.postgres_own")

    stop = start = _own_cluster_only

    @property
    def pid(self) -> None:
        self._own_cluster_only()

    @property
    def log(self) -> None:
        self._own_cluster_only()

    def running(self) -> bool:
        self._own_cluster_only()
        return False


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session, started on first use."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def _postgres_initialised() -> Iterator[Path]:
    """A data directory initdb made once and a clean shutdown left, for
    the own clusters to copy."""
    server = PostgresServer()
    try:
        server.stop()
        yield server.data
    finally:
        server.close()


@pytest.fixture
def postgres_own(_postgres_initialised) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, to stop, kill or restart."""
    server = PostgresServer(data_from=_postgres_initialised)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres(request) -> Iterator[Any]:
    """A fresh database on the shared cluster; for a test marked
    `postgres_own`, a cluster of its own (PostgresServer)."""
    if request.node.get_closest_marker("postgres_own"):
        yield request.getfixturevalue("postgres_own")
        return
    database = SharedDatabase(request.getfixturevalue("postgres_cluster"))
    log = database.cluster.log
    # Where this test's part of the shared log starts: a failed test's
    # report carries what PostgreSQL logged meanwhile (conftest's
    # pytest_runtest_makereport), lock waits included (log_lock_waits).
    request.node.postgres_log = (log, log.stat().st_size if log.exists() else 0)
    try:
        yield database
    finally:
        database.drop()


def postgres_log_since(item: Any, lines: int = 40) -> Optional[str]:
    """The last `lines` lines the shared cluster logged since `item`'s
    database was made, or None when the test had none."""
    where = getattr(item, "postgres_log", None)
    if where is None:
        return None
    path, offset = where
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(the PostgreSQL log {path} could not be read: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"

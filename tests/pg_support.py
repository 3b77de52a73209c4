"""A real PostgreSQL for the tests: beastnet.serve.stores.pg_local's
`LocalPostgres` (initdb and pg_ctl in a fresh temporary directory, on a free
loopback port, as `nobody` when the tests run as root; `beastnet plan local`
runs the same class), stopped by `pg_ctl stop` on the postmaster this
fixture started.  Missing binaries skip on a developer's machine and fail
under CI, naming them (support.require)."""
from __future__ import annotations

from typing import Any

import pytest

from beastnet.serve.stores.pg_local import LocalPostgres
from support import require


class PostgresServer(LocalPostgres):
    """One PostgreSQL cluster of its own, started; `dsn` reaches its
    `postgres` database as the superuser `beastnet` (trust authentication
    on loopback)."""

    def __init__(self) -> None:
        super().__init__(initdb=require("initdb"), pg_ctl=require("pg_ctl"))
        self.start()

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


@pytest.fixture
def postgres():
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()

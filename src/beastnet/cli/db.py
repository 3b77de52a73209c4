"""`beastnet db`: the PostgreSQL schema (`migrate`, `version`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from beastnet.cli._common import EXIT_FAIL, EXIT_PASS

__all__ = ["add_db_command"]


def add_db_command(sub: Any) -> None:
    p = sub.add_parser("db", help="create or migrate the PostgreSQL schema",
                       description="The PostgreSQL database's schema: `migrate` applies the "
                                   "versions this beastnet has and the database lacks, all in "
                                   "one transaction (running it again changes nothing); "
                                   "`version` prints the version the database is at.",
                       epilog="exit status: 0 done; 1 the database could not be reached or "
                              "the migration failed (nothing applied); 2 bad flag")
    p.add_argument("action", choices=("migrate", "version"))
    p.add_argument("--database", required=True, metavar="URL",
                   help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    p.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.stores.postgres import MIGRATIONS, migrate, schema_version

    try:
        if args.action == "version":
            print(f"schema version {schema_version(args.database)} "
                  f"(this beastnet: {MIGRATIONS[-1][0]})")
            return EXIT_PASS
        applied = migrate(args.database)
    except KeyStoreError as exc:
        print(f"beastnet db: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))}: "
              f"schema version {applied[-1]}")
    else:
        print(f"schema up to date (version {MIGRATIONS[-1][0]})")
    return EXIT_PASS

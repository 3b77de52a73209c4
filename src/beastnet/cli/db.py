"""`beastnet db`: the PostgreSQL schema (`migrate`, `version`), and `trim`
of the usage log (PostgreSQL or a SQLite key store file)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from beastnet.cli._common import EXIT_FAIL, EXIT_PASS, EXIT_USAGE

__all__ = ["add_db_command"]


def add_db_command(sub: Any) -> None:
    p = sub.add_parser("db", help="create or migrate the PostgreSQL schema",
                       description="The PostgreSQL database's schema: `migrate` applies the "
                                   "versions this beastnet has and the database lacks, all in "
                                   "one transaction (running it again changes nothing); "
                                   "`version` prints the version the database is at; `trim "
                                   "--before DATE` drops the usage log's rows before DATE "
                                   "(whole monthly partitions on PostgreSQL).",
                       epilog="exit status: 0 done; 1 the database could not be reached or "
                              "the migration failed (nothing applied); 2 bad flag")
    p.add_argument("action", choices=("migrate", "version", "trim"))
    p.add_argument("--database", metavar="URL",
                   help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    p.add_argument("--db", metavar="PATH", help="trim: a SQLite key store file instead")
    p.add_argument("--before", metavar="DATE", help="trim: UTC day YYYY-MM-DD; rows of "
                   "minutes before its start go")
    p.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.stores.postgres import MIGRATIONS, migrate, schema_version

    if args.action == "trim":
        return _trim(args)
    if args.database is None or args.db is not None:
        print(f"beastnet db: error: {args.action} needs --database URL (and no --db)",
              file=sys.stderr)
        return EXIT_USAGE
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


def _trim(args: argparse.Namespace) -> int:
    import calendar
    import time

    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.stores.usage_log import open_usage_log
    if (args.database is None) == (args.db is None) or args.before is None:
        print("beastnet db: error: trim needs --before DATE and one of --database URL, --db PATH",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        before = calendar.timegm(time.strptime(args.before, "%Y-%m-%d"))
    except ValueError:
        print(f"beastnet db: error: --before {args.before!r}: a day, YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = open_usage_log(args.db, args.database)
        try:
            removed = store.trim(before)
        finally:
            store.close()
    except KeyStoreError as exc:
        print(f"beastnet db: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"usage log: {removed} row(s) before {args.before} removed")
    return EXIT_PASS

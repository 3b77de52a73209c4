"""The `beastnet` command: one module per command group (`load`, `report`,
`plan`, `agent`, `demo`, `feeds`, `keys`, `serve`, `stats`, `ws`, `webhooks`),
each with an `add_<name>_command` and a `cmd_<name>`.
They parse arguments and print; policy lives in the library."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from beastnet.cli._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, EXIT_USAGE
from beastnet.cli.agent import add_agent_command
from beastnet.cli.db import add_db_command
from beastnet.cli.demo import add_demo_command
from beastnet.cli.feeds import add_feeds_command
from beastnet.cli.keys import add_keys_command
from beastnet.cli.load import add_load_command
from beastnet.cli.plan import add_plan_command
from beastnet.cli.report import add_report_command
from beastnet.cli.serve import add_serve_command
from beastnet.cli.stats import add_stats_command
from beastnet.cli.ws import add_ws_command
from beastnet.cli.webhooks import add_webhooks_command

__all__ = ["main", "EXIT_PASS", "EXIT_FAIL", "EXIT_USAGE", "EXIT_INTERRUPTED"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `beastnet` console script and `python -m beastnet`."""
    from beastnet import __version__

    parser = argparse.ArgumentParser(prog="beastnet",
                                     description="beastnet: pre-serialized answers at C speed",
                                     epilog="`beastnet COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"beastnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_load_command(sub)
    add_agent_command(sub)
    add_report_command(sub)
    add_plan_command(sub)
    add_demo_command(sub)
    add_db_command(sub)
    add_feeds_command(sub)
    add_keys_command(sub)
    add_serve_command(sub)
    add_stats_command(sub)
    add_ws_command(sub)
    add_webhooks_command(sub)
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0].startswith("-") and given[0] not in ("-h", "--help", "--version"):
        # argparse would only say COMMAND is missing: name the option it does not know
        parser.error(f"unrecognized option {given[0]!r}: options go after the COMMAND "
                     f"(beastnet COMMAND {given[0]} ...)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Reported by the command's own parser, so the usage line shown is the
        # command's, not the top-level one.
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`beastnet stats --watch | head`): nothing more to
        # say to it.  Point stdout at /dev/null so the interpreter's final flush
        # does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PASS

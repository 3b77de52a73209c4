"""The `beastnet` command: one module per command group (`load`, `demo`,
`keys`, `serve`, `stats`), each with an `add_<name>_command` and a `cmd_<name>`.
They parse arguments and print; policy lives in the library."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from beastnet.cli._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, EXIT_USAGE
from beastnet.cli.demo import add_demo_command
from beastnet.cli.keys import add_keys_command
from beastnet.cli.load import add_load_command
from beastnet.cli.serve import add_serve_command
from beastnet.cli.stats import add_stats_command

__all__ = ["main", "EXIT_PASS", "EXIT_FAIL", "EXIT_USAGE", "EXIT_INTERRUPTED"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `beastnet` console script and `python -m beastnet`."""
    parser = argparse.ArgumentParser(prog="beastnet",
                                     description="beastnet: pre-serialized answers at C speed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_load_command(sub)
    add_demo_command(sub)
    add_keys_command(sub)
    add_serve_command(sub)
    add_stats_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))

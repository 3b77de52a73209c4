"""`beastnet agent`: a load agent that takes its work from a coordinating
`beastnet load --agents N --redis URL` (see beastnet.loadgen.agents)."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from beastnet.cli._common import EXIT_INTERRUPTED, EXIT_PASS, EXIT_USAGE
from beastnet.errors import BeastnetError

#: Redis could not be reached (at start, or for a whole lease while running).
EXIT_REDIS = 4
#: The coordinator of the run under way vanished (its lease lapsed): the run stopped.
EXIT_ORPHANED = 5

AGENT_EPILOG = """\
The agent waits for a `beastnet load ... --agents N --redis URL` to claim it,
runs the share of the load it is given (UDP, HTTP(S), WS(S); single runs,
ramp levels and knee-finder probes alike), streams a row and a latency
histogram every second, and sends its result.  It keeps a lease on its name
(renewed every quarter --lease); a coordinator keeps a lease on its agents,
and an agent whose coordinator's lease lapses mid-run stops that run and
exits (a supervisor such as systemd's Restart=always brings it back).

exit status: 0 stopped by SIGTERM; 2 bad usage or the name is taken; 4 Redis
unreachable (at start, or for a whole lease); 5 orphaned: the coordinator's
lease lapsed mid-run; 130 Ctrl-C."""


def add_agent_command(sub: Any) -> None:
    p = sub.add_parser("agent", help="a load agent that takes work from `load --agents`",
                       description="Load agent: register at Redis/Valkey, run the load a "
                                   "coordinator gives, stream per-second results.",
                       epilog=AGENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", metavar="URL", required=True,
                   help="the Redis or Valkey the coordinator uses, redis://HOST:PORT/DB "
                        "(default: none; required)")
    p.add_argument("--name", help="this agent's name, unique at that Redis "
                                  "(default: HOSTNAME-PID)")
    from beastnet.loadgen.config import DEFAULT_LEASE_S
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, metavar="SECONDS",
                   help="lease of the agent's registration: silent this long, a coordinator "
                        "counts it dead (default: %(default)g)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no log line per run (default: a line as each run starts and ends)")
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from beastnet.loadgen.agents import Agent, AgentsError

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    terminated = []

    def on_sigterm(signum: int, frame: Any) -> None:
        # As Ctrl-C: a run under way stops and its partial result is sent.
        terminated.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        agent = Agent(args.redis, args.name, args.lease, log=log)
        why = agent.serve()
    except AgentsError as exc:
        print(f"beastnet agent: {exc}", file=sys.stderr)
        return EXIT_USAGE if "already registered" in str(exc) else EXIT_REDIS
    except BeastnetError as exc:
        print(f"beastnet agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if why == "orphaned":
        return EXIT_ORPHANED
    if why == "redis":
        print(f"beastnet agent: Redis unreachable for {args.lease:g} s", file=sys.stderr)
        return EXIT_REDIS
    return EXIT_PASS if terminated else EXIT_INTERRUPTED

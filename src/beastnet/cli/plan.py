"""`beastnet plan`: run the stress plan (`plan run PLAN.toml` against running
nodes, `plan local` against a topology it starts on this host), or print the
default plan (`--print-default`)."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from beastnet.cli._common import (EXIT_FAIL, EXIT_INTERRUPTED, EXIT_NO_AGENTS, EXIT_PASS,
                                  EXIT_USAGE, add_agents_arguments, open_agents)

PLAN_EPILOG = """\
examples:
  beastnet plan --print-default > plan.toml         the seven-test plan, to edit
  beastnet plan local --scale 2core                 three nodes, Redis, PostgreSQL, nginx here
  beastnet plan run plan.toml -o results/plan       against the nodes plan.toml names
  beastnet report results/plan.json                 the page again from the JSON
  beastnet plan run plan.toml --agents 3 --redis redis://r:6379/0   load from 3 agents
exit status: 0 every test passed or warned, 1 a test failed, 2 a bad plan file or a
topology that could not start, 4 --agents: Redis unreachable or too few agents free,
130 interrupted (production restored first)."""


def add_plan_command(sub: Any) -> None:
    from beastnet.loadgen.plan.spec import SCALES
    p = sub.add_parser("plan", help="run the stress plan: pre-flight, loads, red flags, report",
                       description="Runs a stress plan: each test's pre-flight on every node "
                                   "(profile, reset, zero check), its load, a poll of "
                                   "/admin/cluster-stats with red flags, and the restore; one "
                                   "report (JSON and HTML) at the end.",
                       epilog=PLAN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print-default", action="store_true",
                   help="print the default plan (TOML) and exit")
    p.set_defaults(func=cmd_plan, plan_command=None)
    steps = p.add_subparsers(dest="plan_command", metavar="run|local")
    for name, what in (("run", "run PLAN against the nodes it names"),
                       ("local", "start three nodes, redis-server, PostgreSQL and nginx here, "
                                 "run the plan (default: the default plan), stop them all")):
        s = steps.add_parser(name, help=what, description=what)
        s.add_argument("plan", nargs="?" if name == "local" else None, metavar="PLAN.toml",
                       help="the plan file" + (" (default: the default plan)"
                                               if name == "local" else ""))
        s.add_argument("--scale", default="full", choices=tuple(SCALES),
                       help="shrink the plan for a smaller host: 2core = a tenth of each "
                            "level and a 2-minute endurance test (default: full)")
        s.add_argument("-o", "--output", metavar="PREFIX", default="plan-report",
                       help="write PREFIX.json and PREFIX.html (default: plan-report)")
        s.add_argument("--poll-s", type=float, default=None,
                       help="seconds between cluster-stats reads (default: the plan's poll_s)")
        add_agents_arguments(s, "each test's load")
        if name == "local":
            s.add_argument("--dir", help="where the processes' configs and logs go "
                                         "(default: a new temporary directory, kept)")
            s.add_argument("--no-postgres", action="store_true",
                           help="no PostgreSQL: each node keeps its keys and usage in a SQLite "
                                "key store (default: one PostgreSQL every node shares)")
        s.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from beastnet.loadgen.plan import DEFAULT_PLAN, PlanError, load_plan
    if args.print_default if args.plan_command is None else False:
        sys.stdout.write(DEFAULT_PLAN)
        return EXIT_PASS
    if args.plan_command is None:
        print("beastnet plan: give --print-default, `run PLAN.toml` or `local`", file=sys.stderr)
        return EXIT_USAGE
    if args.poll_s is not None and not args.poll_s > 0:
        print(f"beastnet plan: --poll-s must be > 0, got {args.poll_s}", file=sys.stderr)
        return EXIT_USAGE
    try:
        plan = load_plan(args.plan, args.scale)
    except PlanError as exc:
        print(f"beastnet plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"plan {plan.name!r}: {len(plan.tests)} tests at scale {plan.scale.name}", flush=True)
    if args.plan_command == "local":
        return _run_local(args, plan)
    return _run(args, plan, None)


def _say(line: str) -> None:
    print(line, flush=True)


def _run_local(args: argparse.Namespace, plan: Any) -> int:
    from beastnet.loadgen.plan import PlanError
    from beastnet.loadgen.plan.local import LocalCluster
    cluster = LocalCluster(args.dir, postgres=not args.no_postgres)
    try:
        try:
            cluster.start()
        except PlanError as exc:
            print(f"beastnet plan: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        for p in cluster.describe():
            ports = ", ".join(f"{k} {v}" for k, v in p["ports"].items())
            _say(f"started {p['name']}: PID {p['pid']}, {ports}, log {p['log']}")
        return _run(args, plan, cluster)
    finally:
        # A second Ctrl-C must not cut the teardown short and leave processes behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for problem in cluster.stop():
            print(f"beastnet plan: {problem}", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)
        _say(f"stopped every process started; logs in {cluster.directory}")


def _run(args: argparse.Namespace, plan: Any, cluster: Any) -> int:
    import orjson
    from beastnet.loadgen.plan import PlanError, run_plan
    from beastnet.loadgen.plan.page import format_plan, plan_page
    from beastnet.errors import AgentsError, LoadConfigError
    coordinator = None
    try:
        coordinator = open_agents(args)
        report = run_plan(plan, _say, cluster=cluster, poll_s=args.poll_s,
                          load_runner=coordinator.run if coordinator is not None else None)
    except (PlanError, LoadConfigError) as exc:
        print(f"beastnet plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentsError as exc:
        print(f"beastnet plan: {exc}", file=sys.stderr)
        return EXIT_NO_AGENTS
    finally:
        if coordinator is not None:
            coordinator.close()
    try:
        with open(args.output + ".json", "wb") as f:
            f.write(orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY))
        with open(args.output + ".html", "w", encoding="utf-8") as f:
            f.write(plan_page(report))
    except OSError as exc:
        print(f"beastnet plan: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    _say(format_plan(report))
    _say(f"written: {args.output}.json, {args.output}.html")
    if report["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_FAIL if report["verdict"] == "fail" else EXIT_PASS

"""`beastnet plan`: the stress plan as a command.

A plan file (`spec`) names the targets, the tests and their criteria and the
red-flag thresholds; the runner (`runner`) runs each test with its
pre-flight, load, cluster-stats poll and restore; `local` starts the
production topology on one host for it; `page` writes the one report (JSON
and HTML).  `run_plan` ties them together.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from beastnet.loadgen.plan.spec import (DEFAULT_PLAN, SCALES, Plan, PlanError, load_plan,
                                        parse_plan)

__all__ = ["DEFAULT_PLAN", "SCALES", "Plan", "PlanError", "load_plan", "parse_plan", "run_plan"]


def run_plan(plan: Plan, progress: Callable[[str], None] = print,
             cluster: Any = None, poll_s: Optional[float] = None,
             extra_nodes: Optional[list[Any]] = None,
             load_runner: Optional[Callable[..., Any]] = None) -> dict[str, Any]:
    """Run `plan` against `cluster` (a started `local.LocalCluster`) or the
    plan's own targets, and return the report (JSON-ready).  `load_runner`
    runs each load instead of this process (load agents:
    `agents.Coordinator.run`)."""
    from beastnet.loadgen.plan.runner import NodeTarget, PlanRunner
    from beastnet.loadgen.plan.page import plan_report
    if cluster is not None:
        target = cluster.target()
    else:
        if plan.target.local:
            raise PlanError("target.local = true: run the plan with `beastnet plan local`")
        target = {"nodes": plan.target.nodes, "balanced_http": plan.target.balanced_http,
                  "balanced_udp": plan.target.balanced_udp, "cacert": plan.target.cacert,
                  "keys": plan.target.keys}
    nodes = [NodeTarget(n["name"], n["admin"], n.get("http"), n.get("udp"), n.get("pid"))
             for n in target["nodes"]] + list(extra_nodes or [])
    token = os.environ.get(plan.target.admin_token_env) if plan.target.admin_token_env else None
    runner = PlanRunner(plan, nodes, target, progress, admin_token=token, poll_s=poll_s,
                        load_runner=load_runner)
    body = runner.run()
    return plan_report(plan, body, cluster)

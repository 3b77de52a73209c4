"""`beastnet report`: render a saved `beastnet load --json` report again, or
two of them side by side with deltas (A/B)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from beastnet.cli._common import EXIT_PASS, EXIT_USAGE

REPORT_EPILOG = """\
examples:
  beastnet report run.json                      run.html: the report of one run
  beastnet report before.json after.json -o ab.html   A/B with deltas (after - before)
exit status: 0 written, 2 a file could not be read, parsed or written."""


def add_report_command(sub: Any) -> None:
    p = sub.add_parser("report", help="render saved load reports (one, or two for A/B)",
                       description="Renders the HTML report of a `beastnet load --json` file; "
                                   "with two files, compares them side by side with deltas.",
                       epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a JSON report written by `beastnet load --json` "
                               "(or `beastnet plan`)")
    p.add_argument("other", nargs="?", help="a second report: compare OTHER against RUN")
    p.add_argument("-o", "--html", metavar="PATH",
                   help="where to write the page (default: RUN.html beside RUN, or "
                        "RUN-vs-OTHER.html)")
    p.add_argument("--names", metavar="A,B",
                   help="labels of the two runs (default: the file names)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (default: the summary and the page's path)")
    p.set_defaults(func=cmd_report)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    return base[:-5] if base.endswith(".json") else base


def _ws_text(body: dict) -> str:
    """The terminal summary of a WebSocket report, as `beastnet load ws://`
    or `beastnet ws ...` printed it."""
    from beastnet.cli import ws
    formats = {"ws-density": ws.format_density, "ws-stress": ws.format_stress,
               "ws-knee": ws.format_knee}
    if body["kind"] in formats:
        return str(formats[body["kind"]](body))
    return ws.format_ws_result(body["result"]) + f"\nverdict: {body['verdict'].upper()}"


def cmd_report(args: argparse.Namespace) -> int:
    from beastnet.loadgen import compare, outputs, report
    try:
        first = report.read_report(args.run)
        second = report.read_report(args.other) if args.other else None
    except ValueError as exc:
        print(f"beastnet report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.html
    if out is None:
        folder = os.path.dirname(args.run)
        name = _stem(args.run) + (f"-vs-{_stem(args.other)}" if args.other else "")
        out = os.path.join(folder, name + ".html")
    names = (_stem(args.run), _stem(args.other or ""))
    if args.names:
        parts = args.names.split(",")
        if len(parts) != 2 or not all(parts):
            print(f"beastnet report: --names {args.names!r}: expected A,B", file=sys.stderr)
            return EXIT_USAGE
        names = (parts[0], parts[1])
    from beastnet.loadgen.ws.htmlpage import is_ws_report
    if second is not None and (first["kind"].startswith("ws-") or second["kind"].startswith("ws-")):
        print("beastnet report: WebSocket density, stress and knee reports are rendered one at "
              "a time (no A/B page)", file=sys.stderr)
        return EXIT_USAGE
    if second is not None and "plan" in (first["kind"], second["kind"]):
        print("beastnet report: plan reports are rendered one at a time (their comparisons "
              "are on the page)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if first["kind"] == "plan":
            from beastnet.loadgen.plan.page import format_plan, plan_page
            text = format_plan(first)
            with open(out, "w", encoding="utf-8") as f:
                f.write(plan_page(first))
        elif second is None:
            text = _ws_text(first) if is_ws_report(first) else report.format_report(first)
            outputs.write_html(out, first, text)
        else:
            text = compare.format_compare(first, second, names)
            outputs.write_compare_html(out, first, second, names)
    except OSError as exc:
        print(f"beastnet report: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(text)
        print(f"written: {out}")
    return EXIT_PASS

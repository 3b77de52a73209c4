"""Writing a report's files: JSON, the HdrHistogram log and the HTML page.

The top of the report modules: it imports the text and JSON side (`report`)
and the pages (`htmlreport`); neither imports it.
"""
from __future__ import annotations

from typing import Optional

from beastnet.loadgen.htmlreport import compare_page, report_page
from beastnet.loadgen.report import write_hdr, write_json

__all__ = ["write_compare_html", "write_html", "write_outputs"]


def write_outputs(report: dict, text: str = "", json_path: Optional[str] = None,
                  hdr_path: Optional[str] = None, html_path: Optional[str] = None) -> None:
    """Write each output asked for; an OSError names the file."""
    if json_path:
        write_json(json_path, report)
    if hdr_path:
        write_hdr(hdr_path, report)
    if html_path:
        write_html(html_path, report, text)


def write_compare_html(path: str, a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> None:
    """The A/B page of two reports (see `htmlreport.compare_page`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(compare_page(a, b, names))


def write_html(path: str, report: dict, text_summary: str = "") -> None:
    """The self-contained HTML page of `report` (see `htmlreport`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(report_page(report, text_summary))

"""Report parameters under hypothesis: a SQL metacharacter anywhere in any
parameter of any report is a 400 (BadReport), on the public port and on the
admin listener's key=."""
from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
from hypothesis import given, settings, strategies as st

from beastnet import MissRequest, api_key_id
from beastnet.serve.reports import BadReport, parse_report_query
from test_reports import NOW, reports_on

METACHARS = "'\";\\ %()*<>|&`$\x00\n"


@settings(deadline=None)
@given(kind=st.sampled_from(["usage", "summary", "detail"]),
       name=st.sampled_from(["from", "to", "granularity", "limit", "cursor"]),
       value=st.text(min_size=1, max_size=40),
       meta=st.sampled_from(METACHARS))
def test_sql_metacharacters_in_any_parameter_are_refused(kind, name, value, meta):
    """Whatever surrounds it, a parameter holding a metacharacter is a 400."""
    text = value[: len(value) // 2] + meta + value[len(value) // 2:]
    with pytest.raises(BadReport):
        parse_report_query(kind, f"{name}={quote(text)}", api_key_id("k"), now=NOW)


@settings(deadline=None)
@given(value=st.text(min_size=0, max_size=40), meta=st.sampled_from(METACHARS))
def test_sql_metacharacters_in_the_admin_key_are_refused(value, meta):
    reports = reports_on(None, None)
    text = value[: len(value) // 2] + meta + value[len(value) // 2:]
    request = MissRequest(None, None, None, "http", b"", 0, method="GET",
                          path="/admin/reports/usage/summary", query=f"key={quote(text)}")
    answer = reports._on_admin_report(request)
    if asyncio.iscoroutine(answer):
        answer.close()
        raise AssertionError("a key with a metacharacter reached the store")
    assert answer.status == 400

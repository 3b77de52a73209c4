"""Three tests that tests/test_ci_rules.py runs in a pytest subprocess, with
and without CI set and with redis-server off PATH: not collected by the normal
run (the name does not start with test_)."""
from __future__ import annotations

import pytest

from support import requires


@requires("redis-server")
def test_drives_redis() -> None:
    pass


def test_skips_for_no_real_reason() -> None:
    pytest.skip("this machine lacks something")


@pytest.mark.slow
def test_slow_variant() -> None:
    pass

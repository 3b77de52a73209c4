"""beastnet's load generator: native threads that drive a server without the GIL.

UDP mode (`run_udp_load`) sends `@TAG KEY[ APIKEY]` over many connected
sockets; HTTP mode (`run_http_load`) sends HTTP/1.1 GETs to any server.  Both
run closed loop (a fixed number of requests outstanding) or open loop (a
target rate, latency from the intended send time).  What the numbers mean and
how far they can be trusted: `docs/loadgen.md`.

    from beastnet.loadgen import UDPLoadConfig, run_udp_load
    result = run_udp_load(UDPLoadConfig(port=9000, keys=["BTC"], duration_s=3))
    print(result.rps, result.latency_ns["p99"])

The package is split by concern: `config` (what a run does), `udp` and
`http` (the two modes), `result` (what a run measured), `histogram`
(latency percentiles, NumPy), `ramp` (levels, verdicts, the knee finder) and
`report` (progress line, tables, JSON and HTML); `agents` spreads a run
over `beastnet agent` processes on many machines through Redis.  The native threads live in
the extension module `_native`, which shares no code with the engine.

Names are imported on first use (PEP 562): `config` and `ramp` need neither
NumPy nor the extension, so the CLI can build its help from them cheaply.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beastnet.loadgen._driver import alias_table, ensure_fd_limit
    from beastnet.loadgen.config import (HTTPLoadConfig, LoadConfig, UDPLoadConfig,
                                         http_level_config, level_config, udp_level_config)
    from beastnet.loadgen.histogram import Histogram
    from beastnet.loadgen.http import run_http_load
    from beastnet.loadgen.result import LoadResult, machine_info
    from beastnet.loadgen.udp import run_udp_load
    from beastnet.loadgen.ws.run import run_ws_load
    from beastnet.loadgen.ws.config import WSLoadConfig

_EXPORTS = {
    "HTTPLoadConfig": "config",
    "LoadConfig": "config",
    "UDPLoadConfig": "config",
    "http_level_config": "config",
    "level_config": "config",
    "udp_level_config": "config",
    "Histogram": "histogram",
    "LoadResult": "result",
    "machine_info": "result",
    "run_udp_load": "udp",
    "run_http_load": "http",
    "run_ws_load": "ws.run",
    "WSLoadConfig": "ws.config",
    "alias_table": "_driver",
    "ensure_fd_limit": "_driver",
}

__all__ = [
    "HTTPLoadConfig",
    "Histogram",
    "LoadConfig",
    "LoadResult",
    "UDPLoadConfig",
    "WSLoadConfig",
    "alias_table",
    "ensure_fd_limit",
    "http_level_config",
    "level_config",
    "machine_info",
    "run_http_load",
    "run_udp_load",
    "run_ws_load",
    "udp_level_config",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beastnet.loadgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"beastnet.loadgen.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

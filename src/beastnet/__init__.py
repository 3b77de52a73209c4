"""beastnet: pre-serialized answers served at C speed by native threads.

The public API: `ResponseTable` holds answers; `UDPServer` and `HTTPServer`
serve them (`TLSConfig` puts HTTPS/WSS on an `HTTPServer`); `APIKeyTable` holds API keys and their limits; `Answer` and
`MissRequest` are what a miss handler returns and receives (`is_loopback_client`
tells whether one came from this host; `error_answer(name)` is the answer for
one error of the engines' vocabulary, whose names and statuses are
`ERROR_STATUS`); `ControlPlane` is the event loop
handlers run on, which several servers may share; `run_udp_load` /
`run_http_load` (with `UDPLoadConfig` / `HTTPLoadConfig`) measure a server;
`UDPPusher` sends a table's entries to many UDP addresses in sendmmsg batches;
`StartStop` is the context manager of whatever start() and stop() run;
`WSClientReader`, `ws_client_frame` and `ws_accept_key` are the native
framing of a WebSocket client (an exchange feed's); `keyed_reply_key` names
an answer in an `HTTPServer`'s per-key table (`keyed_replies=True`).
"""
from beastnet._core import APIKeyTable, Entry, ResponseTable, UDPPusher, api_key_id
from beastnet._core import ERROR_STATUS, USAGE_ROUTE_NAMES
from beastnet._core import WSClientReader, ws_accept_key, ws_client_frame
from beastnet._lifecycle import StartStop
from beastnet.control import Answer, ControlPlane, MissRequest, error_answer, is_loopback_client
from beastnet.errors import (BeastnetError, ClusterError, InvalidKeyError, ServerError,
                             TableFullError, TLSConfigError)
from beastnet.server import UDPServer
from beastnet.http_server import HTTPServer, TLSConfig, WebSocketOptions, keyed_reply_key

__version__ = "0.1.0"

# The load generator needs NumPy (~15 MB resident); a server never does, so
# its names are imported on first use (PEP 562).
_LAZY = {name: "beastnet.loadgen" for name in
         ("LoadResult", "UDPLoadConfig", "HTTPLoadConfig", "run_udp_load", "run_http_load")}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'beastnet' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "APIKeyTable",
    "Answer",
    "BeastnetError",
    "ControlPlane",
    "Entry",
    "ClusterError",
    "ERROR_STATUS",
    "HTTPLoadConfig",
    "HTTPServer",
    "InvalidKeyError",
    "LoadResult",
    "MissRequest",
    "ResponseTable",
    "ServerError",
    "StartStop",
    "TableFullError",
    "TLSConfig",
    "TLSConfigError",
    "UDPLoadConfig",
    "UDPServer",
    "UDPPusher",
    "USAGE_ROUTE_NAMES",
    "WSClientReader",
    "WebSocketOptions",
    "__version__",
    "api_key_id",
    "error_answer",
    "is_loopback_client",
    "keyed_reply_key",
    "run_http_load",
    "run_udp_load",
    "ws_accept_key",
    "ws_client_frame",
]

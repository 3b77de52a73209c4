"""beastnet: pre-serialized answers served at C speed by native threads.

The public API: `ResponseTable` holds answers, `UDPServer` serves them,
`APIKeyTable` holds API keys and their limits, `Answer` and `MissRequest` are
what a miss handler returns and receives.
"""
from beastnet._core import APIKeyTable, Entry, ResponseTable
from beastnet.control import Answer, MissRequest
from beastnet.errors import BeastnetError, HandlerError, InvalidKeyError, ServerError
from beastnet.server import UDPServer
from beastnet.http_server import HTTPServer

__version__ = "0.1.0"

# The load generator needs NumPy (~15 MB resident); a server never does, so
# its names are imported on first use (PEP 562).
_LAZY = {"LoadResult": "beastnet.loadgen", "UDPLoadConfig": "beastnet.loadgen",
         "run_udp_load": "beastnet.loadgen"}


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
    "Entry",
    "HandlerError",
    "HTTPServer",
    "InvalidKeyError",
    "LoadResult",
    "MissRequest",
    "ResponseTable",
    "ServerError",
    "UDPLoadConfig",
    "UDPServer",
    "__version__",
    "run_udp_load",
]

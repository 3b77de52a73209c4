"""beastnet: pre-serialized answers served at C speed by native threads.

The public API: `ResponseTable` holds answers, `UDPServer` serves them,
`Answer` and `MissRequest` are what a miss handler returns and receives.
"""
from beastnet._core import Entry, ResponseTable
from beastnet.control import Answer, MissRequest
from beastnet.errors import BeastnetError, HandlerError, InvalidKeyError, ServerError
from beastnet.server import UDPServer
from beastnet.http_server import HTTPServer

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BeastnetError",
    "Entry",
    "HandlerError",
    "HTTPServer",
    "InvalidKeyError",
    "MissRequest",
    "ResponseTable",
    "ServerError",
    "UDPServer",
    "__version__",
]

"""Exchange adapters: one module per exchange (a table and two parse
functions, see `spec.Exchange`), all on the loop in `connection.py`.  A new
exchange is one module here and one import line below."""
from __future__ import annotations

from beastnet.serve.feeds.exchanges import (  # noqa: F401  (each registers itself)
    coinbase, cryptocom, gateio, gemini, kraken, okx)
from beastnet.serve.feeds.exchanges.connection import ExchangeConnection
from beastnet.serve.feeds.exchanges.feed import (
    ExchangeFeed, ExchangeReplayFeed, JSONLRecorder, exchange_assets)
from beastnet.serve.feeds.exchanges.routes import DEFAULT_ROUTES
from beastnet.serve.feeds.exchanges.spec import EXCHANGES, Exchange, register_exchange

__all__ = ["DEFAULT_ROUTES", "EXCHANGES", "Exchange", "ExchangeConnection", "ExchangeFeed",
           "ExchangeReplayFeed", "JSONLRecorder", "exchange_assets", "register_exchange"]

"""Price feeds: where the bundled server's answers come from.

* `base`: the `Tick`, the `Feed` interface (an async iterator of ticks);
* `publisher`: `PricePublisher`, per-source health, choice of source, stale
  marking;
* `simulated`, `replay`: the feeds that need no network;
* `exchanges/`: the exchanges' public market-data streams;
* `registry`: feeds by name (`open_feed(cfg)`).
"""
from __future__ import annotations

from beastnet.serve.feeds.base import Feed, SourceAlive, Tick, price_text
from beastnet.serve.feeds.publisher import PricePublisher
from beastnet.serve.feeds.registry import FEEDS, feed_names, open_feed, register_feed
from beastnet.serve.feeds.replay import ReplayFeed
from beastnet.serve.feeds.simulated import SimulatedFeed
from beastnet.serve.feeds import exchanges  # noqa: E402,F401  (registers its feeds)

__all__ = ["FEEDS", "Feed", "PricePublisher", "ReplayFeed", "SimulatedFeed", "SourceAlive",
           "Tick", "feed_names", "open_feed", "price_text", "register_feed"]

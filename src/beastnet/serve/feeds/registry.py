"""Feeds by name: `beastnet serve --feed NAME` looks its factory up here.

A feed module registers its factory with `@register_feed("name")`; the
service calls `open_feed(cfg)` and never tests the name itself.  A new feed
is one module and one decorator line (plus its import in `__init__`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from beastnet.serve.feeds.base import Feed

if TYPE_CHECKING:
    from beastnet.serve.config import ServeConfig

__all__ = ["FEEDS", "feed_names", "open_feed", "register_feed"]

FeedFactory = Callable[["ServeConfig"], Feed]
FEEDS: dict[str, FeedFactory] = {}


def register_feed(name: str) -> Callable[[FeedFactory], FeedFactory]:
    """Register `factory(cfg) -> Feed` under `name`."""
    def add(factory: FeedFactory) -> FeedFactory:
        if name in FEEDS:
            raise ValueError(f"feed {name!r} is registered twice")
        FEEDS[name] = factory
        return factory
    return add


def feed_names() -> list[str]:
    """The registered feed names, sorted (for help texts and config checks)."""
    return sorted(FEEDS)


def open_feed(cfg: "ServeConfig") -> Feed:
    """The feed `cfg.feed` names, built from `cfg`."""
    try:
        factory = FEEDS[cfg.feed]
    except KeyError:
        raise ValueError(f"unknown feed {cfg.feed!r}: one of {', '.join(feed_names())}") from None
    return factory(cfg)

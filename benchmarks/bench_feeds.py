"""Exchange feeds: messages parsed and published per CPU-second for the six
adapters together, and how fast a silent stream is found stale and its REST
fallback serves, against the fake exchanges of tests/fake_exchange.py.

    PYTHONPATH=src python benchmarks/bench_feeds.py [--messages 300000] [--stale-after 1.0]

Ingest rows, all in this process on one thread (CPU = time.process_time):
  parse only           the adapters' parse functions on decoded JSON (orjson.loads included)
  parse + publish      ExchangeConnection.on_message -> PricePublisher.on_tick -> table
  ... in batches of 64 ExchangeConnection.on_batch, 64 messages of one exchange a call (what
                       the native client hands over per socket read when reads carry many);
                       no publisher batch here, so every tick is still written to the table
  publish only         prebuilt Ticks -> PricePublisher.on_tick (the simulator's path)
  via deliver_to       parse + publish through ExchangeFeed's sink, as `serve` runs it
                       (the publisher called in the reader task)
  via the feed queue   parse + publish through ExchangeFeed's asyncio queue (a consumer
                       that iterates the feed; `serve` did this before deliver_to)
Messages are each exchange's documented ticker message (the fake's fixtures),
up to 30 symbols per exchange (its primary assets), interleaved across the six, every price new, so
every message publishes one answer.  Compare rows of one run: the machine is
shared and absolute figures move with it.

Latency row: arrival -> table through the feed's queue at --rate messages a
second in 1 ms batches (the stream subscriber's leg, table -> socket, is the
engine's push path and is measured by bench_ws.py).

Stale rows: a fake per exchange goes silent (open connection, nothing
sent); "stale after" is the time until the loop marks the stream stale
(bound: --stale-after), "REST serves after" until the REST price is published.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import deque
from typing import Any

import orjson
from _common import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "tests"))

from beastnet import ResponseTable  # noqa: E402
from beastnet.serve.feeds import PricePublisher, Tick  # noqa: E402
from beastnet.serve.feeds.exchanges import (  # noqa: E402
    DEFAULT_ROUTES, EXCHANGES, ExchangeConnection, ExchangeFeed, exchange_assets)
from fake_exchange import FakeExchange, ticker  # noqa: E402

NAMES = list(EXCHANGES)


def messages(total: int) -> tuple[dict[str, list[str]], list[tuple[str, bytes]]]:
    """(exchange -> its assets, interleaved (exchange, raw message) list)."""
    # Each asset at its primary exchange only, so every tick is the served one.
    per = {n: [a for a, names in DEFAULT_ROUTES.items() if names[0] == n][:30] for n in NAMES}
    out: list[tuple[str, bytes]] = []
    base = time.time()
    i = 0
    while len(out) < total:
        for name in NAMES:
            asset = per[name][i % len(per[name])]
            price = f"{100 + (i % 5000) * 0.01:.2f}"
            msg = ticker(name, EXCHANGES[name].symbol_of(asset), price, base + i * 1e-4)
            out.append((name, orjson.dumps(msg)))
        i += 1
    return per, out[:total]


def rate(n: int, cpu_s: float) -> str:
    return f"{n / cpu_s:>12,.0f} msg/CPU-s   ({n:,} in {cpu_s:.3f} CPU-s)"


def connections(per: dict[str, list[str]]) -> tuple[PricePublisher, dict[str, Any]]:
    """A publisher on a fresh table and a connection per exchange feeding it."""
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.5)
    return publisher, {n: ExchangeConnection(EXCHANGES[n], per[n], publisher.on_tick)
                       for n in NAMES}


def bench_ingest(total: int) -> None:
    per, raw = messages(total)
    # parse only
    parsers = {n: EXCHANGES[n].parse for n in NAMES}
    t0 = time.process_time()
    for name, data in raw:
        parsers[name](orjson.loads(data))
    print(f"parse only          {rate(total, time.process_time() - t0)}")
    # parse + publish: one message a call, then 64 messages of one exchange
    # a call (a socket read's, as the native client hands them over)
    batches: dict[str, list[bytes]] = {n: [] for n in NAMES}
    for name, data in raw:
        batches[name].append(data)
    chunks = [(n, msgs[i:i + 64]) for n, msgs in batches.items() for i in range(0, len(msgs), 64)]
    for label, calls in (("parse + publish    ", [(n, [data]) for n, data in raw]),
                         ("... in batches of 64", chunks)):
        publisher, conns = connections(per)
        t0 = time.process_time()
        for name, chunk in calls:
            conns[name].on_batch(chunk)
        cpu = time.process_time() - t0
        assert publisher.published >= total * 0.99, (publisher.published, publisher.health())
        print(f"{label} {rate(total, cpu)}")
    # publish only
    ticks = []
    for name, data in raw:
        for symbol, price, ts in EXCHANGES[name].parse(orjson.loads(data))[0]:
            ticks.append(Tick(conns[name].asset_of[symbol], price, name, ts,
                              EXCHANGES[name].quote))
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.5)
    t0 = time.process_time()
    for tick in ticks:
        publisher.on_tick(tick)
    print(f"publish only        {rate(total, time.process_time() - t0)}")
    # via deliver_to's sink, as `serve` runs it
    feed = ExchangeFeed(routes={a: [n] for n in NAMES for a in per[n]})
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.5)
    feed._sink = publisher.on_tick            # what deliver_to sets, without the connections
    t0 = time.process_time()
    for name, data in raw:
        feed.connections[name].on_message(data)
    cpu = time.process_time() - t0
    assert feed.sink_errors == 0 and publisher.published >= total * 0.99
    print(f"via deliver_to      {rate(total, cpu)}")
    # via the feed's queue, a consumer iterating the feed
    feed = ExchangeFeed(routes={a: [n] for n in NAMES for a in per[n]},
                        queue_size=total + 1)
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.5)

    async def through_queue() -> float:
        consumer = asyncio.ensure_future(_drain(feed, publisher, total))
        await asyncio.sleep(0)
        t0 = time.process_time()
        for name, data in raw:
            feed.connections[name].on_message(data)
        await consumer
        return time.process_time() - t0
    cpu = asyncio.run(through_queue())
    print(f"via the feed queue  {rate(total, cpu)}")


async def _drain(feed: ExchangeFeed, publisher: PricePublisher, total: int) -> None:
    n = 0
    while n < total:
        publisher.on_tick(await feed.queue.get())
        n += 1


async def bench_latency(rate: int, seconds: float) -> None:
    """Arrival -> table through the feed's queue at `rate` messages a second:
    messages arrive in 1 ms batches (as a socket read delivers them), each
    stamped on arrival; the consumer stamps after the table write."""
    total = int(rate * seconds)
    per, raw = messages(total)
    feed = ExchangeFeed(routes={a: [n] for n in NAMES for a in per[n]}, queue_size=total + 1)
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.5)
    arrivals: deque[int] = deque()
    lat_ns: list[int] = []

    async def consume() -> None:
        while len(lat_ns) < total:
            publisher.on_tick(await feed.queue.get())
            lat_ns.append(time.perf_counter_ns() - arrivals.popleft())

    consumer = asyncio.ensure_future(consume())
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            name, data = raw[sent]
            arrivals.append(time.perf_counter_ns())
            feed.connections[name].on_message(data)
            sent += 1
        await asyncio.sleep(0.001)
    await consumer
    lat_ns.sort()
    pick = lambda q: lat_ns[min(len(lat_ns) - 1, int(q * len(lat_ns)))] / 1e3  # noqa: E731
    print(f"\narrival -> table at {rate:,} msg/s for {seconds:g} s ({total:,} messages): "
          f"p50 {pick(0.5):.0f} us  p99 {pick(0.99):.0f} us  max {lat_ns[-1] / 1e3:.0f} us")


async def bench_stale(stale_after_s: float) -> None:
    print(f"\nstale detection, bound {stale_after_s:g} s (REST round every 0.1 s)")
    for name in NAMES:
        asset = exchange_assets(DEFAULT_ROUTES)[name][0]
        symbol = EXCHANGES[name].symbol_of(asset)
        fake = await FakeExchange(name).start()
        fake.ws_prices[symbol] = "100.5"
        fake.rest_prices[symbol] = "99.25"
        table = ResponseTable()
        publisher = PricePublisher(table)
        conn = ExchangeConnection(EXCHANGES[name], [asset], publisher.on_tick,
                                  ws_url=fake.ws_url, rest_url=fake.rest_url,
                                  stale_after_s=stale_after_s, rest_interval_s=0.1,
                                  rest_gap_s=0.0, backoff_base_s=0.05, backoff_max_s=0.2,
                                  ping_interval_s=0.1, connect_delay_s=0.0)
        task = asyncio.ensure_future(conn.run())
        try:
            while not (conn.state == "connected" and asset in table and
                       orjson.loads(table[asset])["price"] == 100.5):
                await asyncio.sleep(0.002)
            fake.silent = True
            t0 = time.monotonic()
            while conn.stale_events < 1:
                await asyncio.sleep(0.002)
            stale_s = time.monotonic() - t0
            while orjson.loads(table[asset])["price"] != 99.25:
                await asyncio.sleep(0.002)
            rest_s = time.monotonic() - t0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fake.stop()
        print(f"{name:<10} stale after {stale_s:6.3f} s   REST serves after {rest_s:6.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--stale-after", type=float, default=1.0)
    ap.add_argument("--rate", type=int, default=10_000, help="latency run: messages a second")
    ap.add_argument("--seconds", type=float, default=3.0, help="latency run: how long")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"# bench_feeds: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} at start (a busy machine moves absolute figures)")
    bench_ingest(args.messages)
    asyncio.run(bench_latency(args.rate, args.seconds))
    asyncio.run(bench_stale(args.stale_after))


if __name__ == "__main__":
    main()

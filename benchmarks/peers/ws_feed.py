"""What every WebSocket fan-out server in bench_ws.py shares: the command line,
the feed bodies, the publisher's schedule, and the exit report.

The feed: 150 symbols S000..S149.  A round publishes a new body for every
symbol, ~90 bytes of JSON:

    {"s":"S012","p":12345.67,"n":41,"t":8123456789012345,"src":"bench-feed....."}

With ``--body-bytes N`` past that, a body carries an order book of N bytes in
all: "b" holds [price, size] levels whose digits change every round (about
half of the bytes are digits, so deflate saves what it saves on market data,
not on padding):

    {"s":"S012","p":12345.67,"n":41,"t":8123...,"b":[[12345.68,3.214],...],"src":"bench-feed"}

"n" is the round number (the client counts skipped rounds as gaps) and "t" the
publish time, CLOCK_MONOTONIC ns taken when the round starts: every process on
one machine reads the same clock, and it never steps (unlike CLOCK_REALTIME
under NTP).  Rounds run ``--rate`` times a second, or back to back with
``--rate max``; ``--rate 0`` publishes nothing (idle memory runs).

Servers import only the standard library from here (plus their own package),
so they run in any environment that has it, e.g. a separate venv for picows
and socketify.
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import threading
import time
from typing import Callable, Optional

SYMBOLS = [f"S{i:03d}" for i in range(150)]
GO = threading.Event()          # set when the publisher may start (see --wait-go)
BODY_BYTES = 90


def body(symbol: str, index: int, round_no: int, t_ns: int) -> bytes:
    """One feed body, padded to BODY_BYTES (longer only if the numbers grow)."""
    price = 100.0 + (index * 37 + round_no) % 100000 / 100.0
    head = f'{{"s":"{symbol}","p":{price:.2f},"n":{round_no},"t":{t_ns},"src":"'
    if BODY_BYTES > 256:
        return _book_body(head[:-8], price, index, round_no)
    pad = max(0, BODY_BYTES - len(head) - 2)
    return (head + "bench-feed" + "." * max(0, pad - 10) + '"}').encode()


_BOOKS: dict[tuple[int, int], str] = {}
_BOOK_VARIANTS = 8


def _book_body(head: str, price: float, index: int, round_no: int) -> bytes:
    """`head` + an order book of [price, size] levels up to BODY_BYTES in all.
    Eight books per symbol are made once and taken in turn (making one costs
    ~0.2 ms of Python; the publisher would spend more than the servers)."""
    key = (index, round_no % _BOOK_VARIANTS)
    book = _BOOKS.get(key)
    if book is None:
        x = (index * 2654435761 + key[1] * 40503) & 0xFFFFFFFF   # a small LCG per book
        levels, size = [], len(head) + 80
        while size < BODY_BYTES:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            levels.append(f"[{price + (len(levels) + 1) * 0.01:.2f},{x % 100000 / 1000:.3f}]")
            size += len(levels[-1]) + 1
        book = _BOOKS[key] = ',"b":[' + ",".join(levels[:-1]) + '],"src":"bench-feed"}'
    return (head + book).encode()


def round_bodies(round_no: int) -> tuple[int, list[tuple[str, bytes]]]:
    """(publish time ns, [(symbol, body)]) for round `round_no`."""
    t_ns = time.monotonic_ns()
    return t_ns, [(s, body(s, i, round_no, t_ns)) for i, s in enumerate(SYMBOLS)]


def parse_args(description: str, argv: Optional[list[str]] = None) -> argparse.Namespace:
    global BODY_BYTES
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed first)")
    p.add_argument("--path", default="/v1/stream")
    p.add_argument("--rate", default="10",
                   help="publisher rounds per second (150 bodies each); 'max' = back to "
                        "back; 0 = never")
    p.add_argument("--threads", type=int, default=None, help="beastnet worker threads")
    p.add_argument("--wait-go", action="store_true",
                   help="publish only after SIGUSR1 (the harness sends it once every client "
                        "has subscribed, so connection set-up is neither measured nor starved)")
    p.add_argument("--body-bytes", type=int, default=BODY_BYTES,
                   help="bytes of each body (past 256: an order book of that size)")
    p.add_argument("--deflate", action="store_true",
                   help="offer permessage-deflate: beastnet compresses bodies of 1 KiB or more "
                        "once per publication, socketify with its SHARED_COMPRESSOR")
    p.add_argument("--udp", action="store_true",
                   help="beastnet: also serve the table over UDP (its port on line 2)")
    args = p.parse_args(argv)
    BODY_BYTES = args.body_bytes
    args.rate = -1.0 if args.rate == "max" else float(args.rate)
    if args.wait_go:
        # Installed before the port is announced, so the harness's SIGUSR1
        # can never meet the default action (terminate).
        signal.signal(signal.SIGUSR1, lambda *_: GO.set())
    else:
        GO.set()
    return args


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (10,000 connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Schedule:
    """When the next round is due: fixed ticks from the start, or back to back.
    A publisher more than a tick late skips the missed ticks (counted in
    `skipped`, never a burst) but keeps round numbers contiguous, so the
    client's gaps count only what the server dropped or conflated."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tick = 0           # ticks elapsed on the schedule
        self.skipped = 0        # ticks missed because a round ran late
        self.published = 0      # rounds published = the next round number
        self._t0 = time.monotonic()

    def delay_s(self) -> float:
        """Seconds to wait before the next round (0: now)."""
        if self.rate < 0:
            return 0.0
        due = self._t0 + self.tick / self.rate
        now = time.monotonic()
        if now - due > 1.0 / self.rate:
            behind = int((now - due) * self.rate)
            self.tick += behind
            self.skipped += behind
            due = self._t0 + self.tick / self.rate
        return max(0.0, due - now)

    def restart(self) -> None:
        """Start the clock now (the publisher waited for its go)."""
        self._t0 = time.monotonic()

    def summary(self) -> dict:
        """What the server reports on exit: rounds published and their rate."""
        elapsed = time.monotonic() - self._t0
        return {"rounds": self.published, "rounds_skipped": self.skipped,
                "rounds_per_s": self.published / elapsed if elapsed > 0 else 0.0}

    def next_round(self) -> int:
        n = self.published + 1          # round 0 is the table's initial content
        self.tick += 1
        self.published += 1
        return n


PUBLISHER_THREAD = "bench-publisher"


def name_thread(name: str) -> None:
    """Name the calling OS thread (prctl PR_SET_NAME), so the harness can tell
    the publisher's CPU from the engine's in /proc/<pid>/task/*/comm."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)     # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


def publish_thread(rate: float, publish: Callable[[int, int, list[tuple[str, bytes]]], None],
                   stop: threading.Event) -> threading.Thread:
    """A publisher on its own thread (servers whose engine runs elsewhere)."""
    sched = Schedule(rate)

    def run() -> None:
        name_thread(PUBLISHER_THREAD)
        while not GO.wait(0.1):
            if stop.is_set():
                return
        sched.restart()
        while not stop.is_set():
            d = sched.delay_s()
            if d > 0 and stop.wait(d):
                break
            n = sched.next_round()
            t_ns, bodies = round_bodies(n)
            publish(n, t_ns, bodies)

    th = threading.Thread(target=run, name="publisher", daemon=True)
    th.schedule = sched  # type: ignore[attr-defined]
    if rate != 0:
        th.start()
    return th


async def publish_task(rate: float, publish: Callable[[int, int, list[tuple[str, bytes]]], object],
                       sched: Optional[Schedule] = None) -> None:
    """A publisher as a task on the server's own event loop.  In `max` mode it
    yields once per round (sleep(0)) so the loop's I/O still runs."""
    import asyncio
    import inspect
    sched = sched or Schedule(rate)
    if rate == 0:
        return
    while not GO.is_set():              # a signal handler sets it: poll, loop-agnostic
        await asyncio.sleep(0.01)
    sched.restart()
    while True:
        d = sched.delay_s()
        await asyncio.sleep(d)
        n = sched.next_round()
        t_ns, bodies = round_bodies(n)
        r = publish(n, t_ns, bodies)
        if inspect.isawaitable(r):
            await r


def announce_port(port: int) -> None:
    print(port, flush=True)


def report(stats: dict) -> None:
    """The one JSON line the harness reads after SIGTERM."""
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()


def on_sigterm(callback: Callable[[], None]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: callback())
    signal.signal(signal.SIGINT, lambda *_: callback())


def parse_subscribe(text: str | bytes) -> Optional[list[str]]:
    """Symbols of a `{"op":"subscribe","symbols":[...]}` request, else None."""
    try:
        msg = json.loads(text)
        if msg.get("op") == "subscribe" and isinstance(msg.get("symbols"), list):
            return [s for s in msg["symbols"] if isinstance(s, str)]
    except (ValueError, AttributeError):
        pass
    return None


def subscribed_ack(symbols: list[str], known: dict) -> bytes:
    unknown = [s for s in symbols if s not in known]
    return json.dumps({"op": "subscribed", "unknown": unknown}, separators=(",", ":")).encode()



def run_loop(main) -> None:
    """Run `main()` on uvloop when it is installed (what these libraries
    recommend for speed), else on asyncio's own loop."""
    import asyncio
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


class Feed:
    """What an asyncio feed server holds: its arguments, each symbol's current
    body and its subscribers.  Raises the fd limit on the way."""

    def __init__(self, description: str) -> None:
        self.args = parse_args(description)
        raise_nofile()
        _, first = round_bodies(0)
        self.current: dict[str, bytes] = dict(first)
        self.subs: dict[str, set] = {s: set() for s in SYMBOLS}
        self.schedule = Schedule(self.args.rate)

    async def serve_until_stopped(self, publish: Callable[[int, int, list[tuple[str, bytes]]],
                                                          object]) -> None:
        """Run the publisher on this loop until SIGTERM or SIGINT."""
        import asyncio
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        pub = asyncio.create_task(publish_task(self.args.rate, publish, self.schedule))
        await stop.wait()
        pub.cancel()

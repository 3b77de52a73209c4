"""The one connection loop every exchange adapter runs on.

Per exchange: connect, subscribe (in the adapter's batches and pace), read
messages forever; a silent stream is *stale* after twice the exchange's
heartbeat interval and is dropped and redialled; reconnects back off with
full jitter up to a cap and never give up.  While the stream is not live the
exchange's REST ticker is polled at a polite, configurable pace (and once at
start, to prewarm the table), so one exchange's trouble is answered by that
exchange's REST, never by a cascade across the others.

Parsing is the adapter's; this loop only maps symbols to assets, refuses
ticks older than the last one seen for a symbol (out of order), counts every
bad message, and hands `Tick`s to `emit`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, Iterator, Optional, Sequence, Union

import orjson

from beastnet.serve.feeds.base import SourceAlive, Tick
from beastnet.serve.feeds.exchanges.spec import Exchange, RawTick
from beastnet.serve.feeds.exchanges.wsclient import WsProtocolError, WsStream, open_stream
from beastnet.serve.upstream import read_capped

__all__ = ["ExchangeConnection", "Recorder", "reap", "run_together"]

log = logging.getLogger("beastnet.serve.feeds.exchanges")

Emit = Callable[[Union[Tick, SourceAlive]], None]
# recorder(exchange, kind "ws"|"rest", REST symbol or None, raw text, receive time s)
Recorder = Callable[[str, str, Optional[str], str, float], None]

_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)


class ExchangeConnection:
    """One exchange's stream for some assets, kept alive until cancelled."""

    def __init__(self, exchange: Exchange, assets: Sequence[str], emit: Emit, *,
                 ws_url: Optional[str] = None, rest_url: Optional[str] = None,
                 stale_after_s: Optional[float] = None, rest_interval_s: float = 5.0,
                 rest_gap_s: Optional[float] = None, rest_timeout_s: float = 5.0,
                 rest_max_bytes: int = 1 << 20, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, open_timeout_s: float = 10.0,
                 ping_interval_s: Optional[float] = None, connect_delay_s: Optional[float] = None,
                 recorder: Optional[Recorder] = None, ws_client: str = "native") -> None:
        self.exchange = exchange
        self.name = exchange.name
        self.emit = emit
        self.ws_url = ws_url or exchange.ws_url
        self.rest_url = (rest_url or exchange.rest_url).rstrip("/")
        # Never looser than the exchange's own rule: twice its heartbeat.
        self.stale_after_s = min(stale_after_s or exchange.stale_after_s, exchange.stale_after_s)
        self.rest_interval_s = rest_interval_s
        self.rest_gap_s = exchange.rest_gap_s if rest_gap_s is None else rest_gap_s
        self.rest_timeout_s = rest_timeout_s
        self.rest_max_bytes = rest_max_bytes
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.ping_interval_s = exchange.ping_interval_s if ping_interval_s is None \
            else ping_interval_s
        self.connect_delay_s = exchange.connect_delay_s if connect_delay_s is None \
            else connect_delay_s
        self.recorder = recorder
        # The exchange's bare keepalive answer, as text or bytes (aiohttp
        # hands text frames over undecoded).
        pong = exchange.pong_text
        self._pong = None if pong is None else (pong, pong.encode())
        self.ws_client = ws_client            # wsclient.CLIENTS
        self.asset_of = {exchange.symbol_of(a): a for a in assets}   # symbol -> asset
        self.symbols = list(self.asset_of)
        # state
        self.state = "connecting"             # connecting, connected, stale, fallback, down
        self.connected = False
        self.last_message = 0.0               # monotonic s of the last WebSocket message
        self.last_ts: dict[str, float] = {}   # symbol -> the exchange time of its last tick
        self.symbols_seen: set[str] = set()
        self.stream_priced: set[str] = set()  # symbols the WebSocket gave a price for
        # counters
        self.messages = 0
        self.ticks = 0
        self.bad_messages = 0                 # not JSON, not the documented shape, errors
        self.out_of_order = 0                 # older than the symbol's last tick
        self.unknown_symbols = 0              # a symbol we did not ask for
        self.reconnects = 0
        self.protocol_errors = 0              # the peer broke WebSocket framing: redialled
        self.stale_events = 0
        self.rest_polls = 0
        self.rest_errors = 0
        self.rest_rate_limited = 0            # 429s
        self.prewarm_skipped = 0              # symbols the stream priced before their REST turn
        self.prewarmed = False                # the start's REST round is over (done or failed)
        self.replies = 0                      # heartbeat answers sent
        # Called with True before a socket read's messages, False after
        # (ExchangeFeed sets it: the publisher writes the table once a read).
        self.batch: Optional[Callable[[bool], None]] = None
        self._ws: Any = None
        self._rate_mark = (time.monotonic(), 0)
        self._rate = 0.0                # messages/s over the last window of >= 1 s
        self._rest_wake = asyncio.Event()
        self._last_error = ""
        self._rest_error = ""
        self._bad_logged = 0.0

    # -- what the feed reads --------------------------------------------------------

    @property
    def fresh_for_s(self) -> float:
        """How long the publisher may take this exchange's last price as
        fresh: the stream's bound, or a REST round's while polling."""
        rounds = len(self.exchange.rest_paths(self.symbols)) if self.symbols else 1
        return max(self.stale_after_s, 2.0 * (self.rest_interval_s + rounds * self.rest_gap_s))

    def health(self) -> dict[str, Any]:
        """State and counters, for /admin/stats, /metrics and `beastnet stats`."""
        now = time.monotonic()
        mark_t, mark_n = self._rate_mark
        if now - mark_t >= 1.0:
            # A window closes: its rate stands until the next one closes, so
            # a second reader right after (stats and metrics in one scrape)
            # does not read a window of microseconds (0 msg/s).
            self._rate = (self.messages - mark_n) / (now - mark_t)
            self._rate_mark = (now, self.messages)
        return {
            "state": self.state, "quote": self.exchange.quote,
            "message_age_s": round(now - self.last_message, 3) if self.last_message else None,
            "msgs_per_s": round(self._rate, 1), "messages": self.messages,
            "ticks": self.ticks, "reconnects": self.reconnects, "stale_events": self.stale_events,
            "protocol_errors": self.protocol_errors,
            "rest_polls": self.rest_polls, "rest_errors": self.rest_errors,
            "rest_rate_limited": self.rest_rate_limited, "prewarm_skipped": self.prewarm_skipped,
            "prewarmed": self.prewarmed,
            "bad_messages": self.bad_messages,
            "out_of_order": self.out_of_order, "unknown_symbols": self.unknown_symbols,
            "symbols": len(self.symbols), "symbols_seen": len(self.symbols_seen),
            "stale_after_s": self.stale_after_s, "last_error": self._last_error,
        }

    # -- the parse path (also replay's) ---------------------------------------------

    def on_message(self, raw: Union[str, bytes], received: Optional[float] = None) -> Optional[str]:
        """Take one WebSocket message; return a text to send back, if any."""
        replies = self.on_batch((raw,), received)
        return replies[0] if replies else None

    def on_batch(self, raws: Sequence[Union[str, bytes]],
                 received: Optional[float] = None) -> Optional[list[str]]:
        """Take the messages of one socket read, in order (each parsed and
        its ticks emitted as it comes: the bad-data checks see every one);
        return the texts to send back, if any.  The clocks are read once
        for the batch: its messages arrived together."""
        now = time.time() if received is None else received
        self.messages += len(raws)
        self.last_message = time.monotonic()
        recorder, pong, parse, loads = self.recorder, self._pong, self.exchange.parse, orjson.loads
        batch = self.batch
        if batch is not None and len(raws) > 1:   # one message: nothing to write once
            batch(True)
            try:
                return self._messages(raws, now, recorder, pong, parse, loads)
            finally:
                batch(False)
        return self._messages(raws, now, recorder, pong, parse, loads)

    def _messages(self, raws: Sequence[Union[str, bytes]], now: float, recorder: Any,
                  pong: Any, parse: Any, loads: Any) -> Optional[list[str]]:
        replies: Optional[list[str]] = None
        for raw in raws:
            if recorder is not None:
                recorder(self.name, "ws", None,
                         raw if isinstance(raw, str) else raw.decode("utf-8", "replace"), now)
            if pong is not None and raw in pong:
                self.emit(SourceAlive(self.name))
                continue
            try:
                ticks, reply = parse(loads(raw))
            except _PARSE_ERRORS as exc:      # orjson.JSONDecodeError is a ValueError
                self._bad(exc, raw)
                continue
            if ticks:
                self._take(ticks, now, self.stream_priced)
            else:
                self.emit(SourceAlive(self.name))
            if reply is not None:
                self.replies += 1
                if replies is None:
                    replies = []
                replies.append(reply)
        return replies

    def on_rest_body(self, body: bytes, symbol: Optional[str],
                     received: Optional[float] = None) -> int:
        """Take one REST ticker body; the number of ticks it gave."""
        now = time.time() if received is None else received
        if self.recorder is not None:
            self.recorder(self.name, "rest", symbol, body.decode("utf-8", "replace"), now)
        ticks = self.exchange.parse_rest(orjson.loads(body), symbol)
        self._take(ticks, now)
        return len(ticks)

    def _take(self, ticks: list[RawTick], now: float,
              priced: Optional[set[str]] = None) -> None:
        quote = self.exchange.quote
        for symbol, price, ts in ticks:
            asset = self.asset_of.get(symbol)
            if asset is None:
                self.unknown_symbols += 1
                continue
            if ts:
                if ts < self.last_ts.get(symbol, 0.0):
                    self.out_of_order += 1
                    continue
                self.last_ts[symbol] = ts
            self.symbols_seen.add(symbol)
            if priced is not None:
                priced.add(symbol)
            self.ticks += 1
            self.emit(Tick(asset, price, self.name, ts or now, quote))

    def _bad(self, exc: BaseException, raw: Union[str, bytes]) -> None:
        self.bad_messages += 1
        now = time.monotonic()
        if now - self._bad_logged >= 10.0:    # one line per 10 s, the count says the rest
            self._bad_logged = now
            log.warning("exchange %s: bad message (%d so far): %s: %r", self.name,
                        self.bad_messages, type(exc).__name__, raw[:120])

    # -- the loops --------------------------------------------------------------------

    async def run(self) -> None:
        """Stream forever (until cancelled): WebSocket, watchdog, REST."""
        await run_together([self._stream(), self._watchdog(), self._rest_loop()])

    async def _stream(self) -> None:
        attempt = 0
        while True:
            try:
                ws = await open_stream(self.ws_url, self.ws_client, self.open_timeout_s)
                self._ws = ws
                try:
                    heard = await self._session(ws)
                except BaseException:
                    # Stopping, or the stream broke: no close handshake with
                    # a peer that may be hung.
                    ws.abort()
                    await ws.release()
                    raise
                await ws.close()
                if heard:
                    attempt = 0
                self._gone("closed by the exchange")
            except asyncio.CancelledError:
                raise
            except WsProtocolError as exc:    # a bad frame or handshake: counted, retried
                self.protocol_errors += 1
                self._gone(f"protocol error: {exc}")
            except Exception as exc:          # DNS, refused, TLS, handshake, 1006: all retried
                self._gone(f"{type(exc).__name__}: {exc}".strip(": "))
            finally:
                self._ws = None
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"),
            # capped: a fleet of servers does not redial an exchange in step.
            delay = random.uniform(0.5, 1.0) * min(self.backoff_max_s,
                                                   self.backoff_base_s * 2 ** min(attempt, 16))
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(delay)

    async def _session(self, ws: WsStream) -> bool:
        """Subscribe, then read until the stream ends; True if it delivered."""
        self.last_message = time.monotonic()  # the stale timer counts from the connect
        if self.connect_delay_s:
            await asyncio.sleep(self.connect_delay_s)
        pinger = asyncio.ensure_future(self.keepalive(ws))
        # Subscribing at the exchange's pace takes seconds (Coinbase: 10 a
        # second): read the first answers meanwhile.
        subscriber = asyncio.ensure_future(self.subscribe(ws))
        try:
            # Each message to on_message as it is read (the native client:
            # in its data_received, every frame of a socket read in turn).
            return await ws.deliver(self.on_message, self._live, self.on_batch)
        finally:
            for task in (subscriber, pinger):
                task.cancel()
                task.add_done_callback(reap)

    async def subscribe(self, ws: WsStream) -> None:
        """Send the subscribe messages, in the adapter's batches and pace."""
        batch = max(1, self.exchange.subscribe_batch)
        for i in range(0, len(self.symbols), batch):
            for text in self.exchange.subscribe(self.symbols[i:i + batch]):
                await ws.send(text)
            if self.exchange.subscribe_gap_s:
                await asyncio.sleep(self.exchange.subscribe_gap_s)

    async def keepalive(self, ws: WsStream) -> None:
        """The client's keepalive (Gate.io spot.ping, OKX ping), forever."""
        if self.exchange.ping_text is None or self.ping_interval_s <= 0:
            return
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await ws.send(self.exchange.ping_text())

    def _live(self) -> None:
        self.connected = True
        self._set_state("connected", f"stream live ({self.ws_url})")

    def _gone(self, why: str) -> None:
        self.connected = False
        self._last_error = why
        if self.state == "connected":
            self._set_state("stale", f"stream lost: {why}; REST fallback meanwhile")
        self._rest_wake.set()

    def _set_state(self, state: str, detail: str) -> None:
        """One log line per change of state, never one per retry."""
        if state == self.state:
            return
        quiet = state == "connected" and self.state == "connecting"
        self.state = state
        (log.debug if quiet else log.warning if state == "down" else log.info)(
            "exchange %s: %s: %s", self.name, state, detail)

    async def _watchdog(self) -> None:
        period = min(1.0, max(0.01, self.stale_after_s / 8))
        # The time this watchdog woke late since the last message: the whole
        # process stalled (a busy host; the loop held by other work), and a
        # silence no one was awake to hear is not the exchange's.  Without
        # it, one stall of the process made every exchange stale at once
        # (seen: two of six in the same tick, 0.6 s against a 0.5 s bound).
        # It also covers what arrived during the stall: right after one the
        # timers run before the loop reads the sockets, and the stall being
        # excused, the judgement waits for a wake on time, after the read.
        excused, heard = 0.0, self.last_message
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            now = time.monotonic()
            if self.last_message != heard:
                excused, heard = 0.0, self.last_message
            # Late past one more period: a stall; only its part after the
            # last message counts (a stall that ended in a message is heard).
            excused += max(0.0, now - max(due + period, self.last_message))
            silent = now - self.last_message
            ws = self._ws
            # An open stream, live or not yet: one that never speaks is as dead.
            if ws is not None and silent - excused > self.stale_after_s:
                self.stale_events += 1
                was_live, self.connected = self.connected, False
                self._last_error = f"silent for {silent:.1f} s"
                if was_live:
                    stalled = f", {excused:.1f} s of it excused: the process stalled" \
                        if excused >= 0.05 else ""
                    self._set_state("stale", f"no message for {silent:.1f} s (bound "
                                    f"{self.stale_after_s:g} s{stalled}); redialling, REST "
                                    "fallback meanwhile")
                self._rest_wake.set()
                self._ws = None
                ws.abort()                    # a silent peer may never finish a close

    async def _rest_loop(self) -> None:
        """Prewarm once, then poll only while the stream is not live."""
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=self.rest_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ok = await self._rest_round(session, prewarm=True)
            self.prewarmed = True
            if not self.connected and self._last_error:   # the stream failed meanwhile
                self._say_rest(ok)
            while True:
                if self.connected:
                    self._rest_wake.clear()
                    await self._rest_wake.wait()
                    continue
                ok = await self._rest_round(session)
                if not self.connected:
                    self._say_rest(ok)
                await asyncio.sleep(self.rest_interval_s)

    def _say_rest(self, ok: bool) -> None:
        if ok:
            self._set_state("fallback", f"serving from REST {self.rest_url} "
                            f"(stream: {self._last_error})")
        else:
            self._set_state("down", f"stream: {self._last_error}; REST: {self._rest_error}; "
                            "retrying both")

    async def _rest_round(self, session: Any, prewarm: bool = False) -> bool:
        """One GET per REST path, `rest_gap_s` apart; True if any answered.
        A fallback round stops when the stream comes back; the prewarm runs
        through (a quiet symbol may not tick on the stream for a while) but
        skips the symbols the stream has priced (counted in prewarm_skipped)."""
        ok = False
        for path, symbol in self._prewarm_paths() if prewarm else \
                self.exchange.rest_paths(self.symbols) if self.symbols else ():
            if self.connected and not prewarm:
                return True
            self.rest_polls += 1
            try:
                async with session.get(self.rest_url + path) as resp:
                    capped = await read_capped(resp, self.rest_max_bytes)
                    if not capped.complete:
                        raise ValueError(f"body over {self.rest_max_bytes} bytes: cut")
                    body = capped.data
                    if resp.status == 429:
                        self.rest_rate_limited += 1
                        retry = _retry_after(resp.headers.get("Retry-After"))
                        raise _RateLimited(f"HTTP 429, retry after {retry:.0f} s", retry)
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                self.on_rest_body(body, symbol)
                ok = True
            except asyncio.CancelledError:
                raise
            except _RateLimited as exc:
                self._rest_failed(path, exc)
                await asyncio.sleep(exc.retry_s)
            except (OSError, asyncio.TimeoutError) as exc:
                # The host is unreachable (DNS, refused, timeout; aiohttp's
                # connection errors are OSErrors): the rest of the round
                # would fail the same way.
                self._rest_failed(path, exc)
                return ok
            except Exception as exc:          # HTTP errors, bad bodies: counted, retried
                self._rest_failed(path, exc)
            await asyncio.sleep(self.rest_gap_s)
        # A prewarm with nothing left to ask for is not a failure of REST.
        return ok or (prewarm and all(s in self.stream_priced for s in self.symbols))

    def _prewarm_paths(self) -> Iterator[tuple[str, Optional[str]]]:
        """The prewarm's REST paths, less the symbols the stream priced by
        their turn: those need no REST price, and a REST ticker without a
        time (Kraken, Gate.io) would be taken as newer than the stream's.
        One request per symbol (most exchanges): each is looked at when its
        turn comes; one request for all (Kraken): once, at the start."""
        def pending() -> list[str]:
            left = [s for s in self.symbols if s not in self.stream_priced]
            self.prewarm_skipped += len(self.symbols) - len(left)
            return left
        if len(self.exchange.rest_paths(self.symbols[:2])) < min(2, len(self.symbols)):
            left = pending()
            yield from self.exchange.rest_paths(left) if left else ()
            return
        for symbol in self.symbols:
            if symbol in self.stream_priced:
                self.prewarm_skipped += 1
                continue
            yield from self.exchange.rest_paths([symbol])

    def _rest_failed(self, path: str, exc: BaseException) -> None:
        self.rest_errors += 1
        self._rest_error = f"{type(exc).__name__}: {exc}".strip(": ")
        log.debug("exchange %s: REST %s%s: %s", self.name, self.rest_url, path, self._rest_error)


async def run_together(coros: Sequence[Awaitable[Any]]) -> None:
    """Run `coros` as tasks until all end or one fails; either way (and when
    the caller is cancelled) cancel the rest and wait for them to go."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def reap(task: "asyncio.Future[Any]") -> None:
    """Done-callback of a helper task cancelled with its stream: a send on
    a closed stream fails there, and the reader already saw why."""
    if not task.cancelled():
        task.exception()                      # retrieved: not "never retrieved"


class _RateLimited(Exception):
    def __init__(self, message: str, retry_s: float) -> None:
        super().__init__(message)
        self.retry_s = retry_s


def _retry_after(value: Optional[str]) -> float:
    """Seconds to wait after a 429: the header's, between 1 s and 60 s."""
    try:
        return min(60.0, max(1.0, float(value or 1)))
    except ValueError:
        return 5.0

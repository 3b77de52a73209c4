"""WebSocket servers of known behaviour for the load generator's truth tests:
each is a `websockets` asyncio server on its own thread and loop, with a
`behaviour` coroutine per connection and a record of what it did."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

import orjson
import websockets

from beastnet import HTTPServer, ResponseTable, WebSocketOptions

Behaviour = Callable[[Any, "ScriptedServer"], Awaitable[None]]


class ScriptedServer:
    """`with ScriptedServer(behaviour) as s:` serves ws://127.0.0.1:{s.port}/;
    `s.record` holds what the behaviours wrote down, `s.accepted` the
    connections opened."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.record: dict[str, Any] = {}
        self.accepted = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        self._stop: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._handlers: set[asyncio.Task] = set()

    async def _handler(self, ws: Any) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.behaviour(ws, self)
        except websockets.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            pass                        # the server stopping (_shutdown): the script ends here
        finally:
            self._handlers.discard(task)

    async def _main(self) -> None:
        async with websockets.serve(self._handler, "127.0.0.1", 0, ping_interval=None) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            # Connection handlers still sleeping are cancelled with the loop,
            # and awaited: one loop turn is not always enough for a cancelled
            # handler to finish, and a task still pending when the loop
            # closes is reported in whichever test runs next.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.wait(pending))
            self._loop.close()

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        assert self._ready.wait(10), "scripted server did not start"
        return self

    def _shutdown(self) -> None:
        # Behaviours end by holding their connection open (asyncio.sleep):
        # end them, or closing the server would wait for them to finish.
        for task in self._handlers:
            task.cancel()
        self._stop.set_result(None)

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(10)
        assert not self._thread.is_alive(), "scripted server did not stop within 10 s"


@contextlib.contextmanager
def feed_server(**server_kw: Any) -> Iterator[tuple[HTTPServer, list[str]]]:
    """beastnet's feed over 20 symbols, written every 5 ms with a "ts" stamp
    (milliseconds): (the running HTTPServer, the symbols)."""
    symbols = [f"S{i:02d}" for i in range(20)]
    table = ResponseTable({s: orjson.dumps({"s": s, "ts": time.time_ns() // 10**6})
                           for s in symbols})
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            for s in symbols:
                table.set(s, orjson.dumps({"s": s, "ts": time.time_ns() // 10**6}))
            time.sleep(0.005)

    server_kw.setdefault("websocket", WebSocketOptions())
    with HTTPServer(table, threads=1, **server_kw) as server:
        writer = threading.Thread(target=publish)
        writer.start()
        try:
            yield server, symbols
        finally:
            stop.set()
            writer.join()

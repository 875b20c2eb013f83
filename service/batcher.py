"""Group commit: requests that arrive within a short window are handled by one call.

A receiver that commits once per request pays one WAL flush per request; concurrent
requests that wait a millisecond for each other share one. Each caller awaits its own
result, which the flush function hands back only after its commit: nothing is answered
before it is stored. A flush returns one result per item, in order, or an exception for
an item (that item's caller sees it raised; the others are unaffected). An exception
raised by the flush itself goes to every caller of that batch.

At most `max_in_flight` flushes run at once: when that many are under way, a batch
whose window has ended waits for one of them to finish and takes in everything that
arrived meanwhile. Under load the batches grow to what arrives during one commit (one
statement and one commit for many more requests) instead of more statements competing
for the same CPU; when idle, a request waits no longer than the window.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        window_seconds: float,
        max_items: int,
        max_in_flight: int | None = None,
    ) -> None:
        self._flush = flush
        self._window = window_seconds
        self._max_items = max(1, max_items)
        self._max_in_flight = max_in_flight
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        # The waiting items' window has ended (or they fill a batch): they go with the
        # next flush that may start.
        self._due = False
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self._max_items:
            self._start_flush()
        elif self._timer is None and not self._due:
            self._timer = loop.call_later(self._window, self._start_flush)
        # A cancelled caller (client gone) cancels only its own future: the batch runs in
        # its own task, and `_run` skips a future that is done.
        return await future

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._items and (
            self._max_in_flight is None or len(self._running) < self._max_in_flight
        ):
            items, futures = self._items[: self._max_items], self._futures[: self._max_items]
            del self._items[: self._max_items], self._futures[: self._max_items]
            # A fresh context: the batch belongs to no single request's log context.
            task = asyncio.get_running_loop().create_task(
                self._run(items, futures), context=contextvars.Context()
            )
            self._running.add(task)
            task.add_done_callback(self._flushed)
        # What is left waits for a flush to finish (`_flushed`).
        self._due = bool(self._items)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._due:
            self._start_flush()

    async def _run(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._flush(items)
            if len(results) != len(items):
                raise RuntimeError(f"flush returned {len(results)} results for {len(items)}")
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def drain(self) -> None:
        """Flush what is waiting and wait for every flush under way (shutdown)."""
        self._start_flush()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
            self._start_flush()

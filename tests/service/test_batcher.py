"""Group commit's batcher on its own (no database): the bound on flushes under way."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.batcher import Batcher


def test_a_busy_batcher_gathers_what_arrives_into_the_next_flush() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()  # the first commit is slow
        return [item * 10 for item in items]

    async def scenario() -> list[int]:
        batcher: Batcher[int, int] = Batcher(
            flush, window_seconds=0.001, max_items=4, max_in_flight=1
        )
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # its window ends: the first flush is under way
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.01)  # their windows end too, but the flush is busy
        assert batches == [[0]]
        release.set()
        results = await asyncio.gather(first, *later)
        await batcher.drain()
        return results

    results = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40, 50, 60]
    # Six waited for one flush: then at most max_items a statement, in arrival order.
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_drain_flushes_what_waits_behind_a_busy_flush() -> None:
    flushed: list[int] = []

    async def flush(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0.005)
        flushed.extend(items)
        return list(items)

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(
            flush, window_seconds=0.05, max_items=2, max_in_flight=1
        )
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.drain()
        assert all(p.done() for p in pending)

    asyncio.run(scenario())
    assert flushed == [0, 1, 2, 3, 4]

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


def test_a_second_statement_waits_for_a_half_full_batch_or_a_late_first() -> None:
    """The batch statement has a fixed cost per statement (docs/performance.md, issue 20
    round 9): while one flush is under way, a second starts only for a batch of at least
    half max_items, or once the first is late; else its items ride with the next."""
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()
        return list(items)

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(
            flush, window_seconds=0.001, max_items=8, max_in_flight=2, late_seconds=0.2
        )
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first flush is under way (and not late)
        few = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.02)  # their window ended: held back, two are not half of 8
        assert batches == [[0]]
        more = [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4)]
        await asyncio.sleep(0.02)  # four are half of 8: the second statement starts
        assert batches == [[0], [1, 2, 3, 4]]
        late = [asyncio.ensure_future(batcher.submit(i)) for i in (5,)]
        await asyncio.sleep(0.3)  # the first is late now: the second slot is used
        assert batches == [[0], [1, 2, 3, 4], [5]]
        release.set()
        assert await asyncio.gather(first, *few, *more, *late) == [0, 1, 2, 3, 4, 5]
        await batcher.drain()

    asyncio.run(scenario())


def test_held_back_items_go_when_the_flush_under_way_ends() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()
        return list(items)

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(
            flush, window_seconds=0.001, max_items=8, max_in_flight=2, late_seconds=10
        )
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        held = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.02)
        assert batches == [[0]]
        release.set()
        assert await asyncio.gather(first, *held) == [0, 1, 2]
        await batcher.drain()

    asyncio.run(scenario())
    assert batches == [[0], [1, 2]]

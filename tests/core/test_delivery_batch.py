"""Callback deliveries asked for by a worker process go out as one message per batch
(workers/delivery_batch.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from workers import delivery_batch
from workers.delivery_batch import DeliveryBatcher


class Sent:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.event = threading.Event()

    def __call__(self, order_ids: Sequence[str]) -> None:
        self.batches.append(list(order_ids))
        self.event.set()


def test_deliveries_asked_for_within_a_window_share_one_message_each_order_once() -> None:
    sent = Sent()
    batcher = DeliveryBatcher(sent)
    for order_id in ("o-1", "o-2", "o-1", "o-3"):
        batcher.add(order_id)
    assert sent.event.wait(5)
    assert sent.batches == [["o-1", "o-2", "o-3"]]


def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch is delivered by one thread: its size is bounded, never the window's load.
    monkeypatch.setattr(delivery_batch, "MAX_ORDERS", 3)
    monkeypatch.setattr(delivery_batch, "WINDOW_SECONDS", 30.0)
    sent = Sent()
    batcher = DeliveryBatcher(sent)
    for i in range(4):
        batcher.add(f"o-{i}")
    assert sent.batches == [["o-0", "o-1", "o-2"]]
    batcher.flush()  # a process shutting down sends what is pending
    assert sent.batches == [["o-0", "o-1", "o-2"], ["o-3"]]


def test_a_batch_the_broker_refused_is_only_a_delay() -> None:
    # The events are in the outbox already: the sweeper delivers them later.
    def broken(_: Sequence[str]) -> None:
        raise ConnectionError("redis down")

    batcher = DeliveryBatcher(broken)
    batcher.add("o-1")
    batcher.flush()
    batcher.add("o-2")
    deadline = time.monotonic() + 5
    while batcher._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher._pending == {}

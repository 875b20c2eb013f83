"""Several orders' reconciles in one message (ordersync.jobs.batch_reconciles,
workers/tasks.py reconcile_orders): each order on its own, none lost or held by another."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ordersync import jobs
from ordersync.jobs import MAX_ORDERS_PER_MESSAGE, Enqueued, Job
from workers import poison, tasks


def test_plain_reconciles_of_one_sending_share_messages_each_order_once() -> None:
    pending = [
        Enqueued(Job.RECONCILE_ORDER, ("a",), request_id="r-a"),
        Enqueued(Job.DELIVER_CALLBACKS, ("a",)),
        Enqueued(Job.RECONCILE_ORDER, ("b",)),
        Enqueued(Job.RECONCILE_ORDER, ("a",), request_id="r-a2"),
        # A retry's countdown and an operator's force keep their own message.
        Enqueued(Job.RECONCILE_ORDER, ("c",), delay=2.0),
        Enqueued(Job.RECONCILE_ORDER, ("d",), {"force": True}),
        Enqueued(Job.RECONCILE_ORDER, ("e",)),
    ]
    sent = jobs.batch_reconciles(pending)
    assert sent[0] == Enqueued(
        Job.RECONCILE_ORDERS, (["a", "b", "e"],), {"request_ids": ["r-a", None, None]}
    )
    assert sent[1:] == [pending[1], pending[4], pending[5]]
    # Every batched job goes to the money queue, as a single reconcile does.
    assert Job.RECONCILE_ORDERS.queue is Job.RECONCILE_ORDER.queue


def test_a_batch_is_bounded_and_a_lone_order_keeps_the_single_message() -> None:
    count = 2 * MAX_ORDERS_PER_MESSAGE + 1
    pending = [Enqueued(Job.RECONCILE_ORDER, (f"o-{i}",)) for i in range(count)]
    sent = jobs.batch_reconciles(pending)
    assert [job.job for job in sent] == [Job.RECONCILE_ORDERS] * 2 + [Job.RECONCILE_ORDER]
    assert [len(job.args[0]) for job in sent[:2]] == [MAX_ORDERS_PER_MESSAGE] * 2
    assert sent[0].kwargs == {}  # no request ids to carry
    assert sent[2].args == (f"o-{count - 1}",)
    # One reconcile alone is sent as it always was.
    alone = [Enqueued(Job.RECONCILE_ORDER, ("x",), request_id="r")]
    assert jobs.batch_reconciles(alone) == alone


class _Reconciler:
    """Stands in for the reconciler: each order's behaviour by its id."""

    runs: list[str] = []

    def __init__(self, *_: Any) -> None:
        pass

    def run(self, order_id: str, *, force: bool = False) -> str:
        _Reconciler.runs.append(order_id)
        if order_id.startswith("bug"):
            raise ValueError("a row no sender could produce")
        if order_id.startswith("db"):
            raise psycopg.OperationalError("the server closed the connection")
        return "in_sync"


def _no_retry(*_: Any) -> Exception:
    raise AssertionError("the database is not away in this test")


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    _Reconciler.runs = []
    recorded: list[tuple[str, str]] = []
    monkeypatch.setattr(tasks, "Reconciler", _Reconciler)
    monkeypatch.setattr(tasks, "get_context", lambda: object())
    monkeypatch.setattr(
        poison,
        "record_order_failure",
        lambda _ctx, order_id, task, exc: recorded.append((order_id, task)),
    )
    return recorded


def test_one_orders_failure_neither_stops_nor_loses_the_others(
    fake_worker: list[tuple[str, str]],
) -> None:
    outcomes = tasks.reconcile_batch(["a", "bug-1", "b"], None, _no_retry)
    assert outcomes == {"a": "in_sync", "bug-1": "poisoned", "b": "in_sync"}
    # The failing order alone was tried again, then recorded on its order as a single
    # reconcile's failure is (parked with needs_attention naming the task).
    assert _Reconciler.runs == ["a"] + ["bug-1"] * poison.MAX_TRIES + ["b"]
    assert fake_worker == [("bug-1", "reconcile_order")]


def test_an_exception_escaping_the_guard_does_not_stop_the_batch(
    fake_worker: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("recording the failure failed too")

    monkeypatch.setattr(poison, "record_order_failure", broken)
    outcomes = tasks.reconcile_batch(["bug-1", "a"], None, _no_retry)
    assert outcomes == {"bug-1": "failed", "a": "in_sync"}


def test_the_database_away_sends_that_order_and_the_rest_again_with_back_off(
    fake_worker: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    retried: list[tuple[Any, ...]] = []

    class Retry(Exception):
        pass

    def retry(*args: Any) -> Exception:
        retried.append(args)
        return Retry()

    with pytest.raises(Retry):
        tasks.reconcile_batch(["a", "db-1", "b"], ["r-a", "r-db", None], retry)
    # "a" is done and committed; the rest goes again as one message (the task's retry,
    # with the back-off of RETRY_ON_DATABASE_ERRORS).
    assert _Reconciler.runs == ["a", "db-1"]
    ((rest, rest_ids, exc),) = retried
    assert (rest, rest_ids) == (["db-1", "b"], ["r-db", None])
    assert isinstance(exc, psycopg.OperationalError)

"""One enqueue-after-commit mechanism (ordersync/jobs.py) and the web writer's broker check."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ordersync import jobs
from ordersync.errors import ConfigError
from ordersync.jobs import BROKER_TRANSPORT_OPTIONS, Enqueued, Job, NoUnitOfWork, enqueue_job
from service.publisher import check_broker


def test_jobs_are_sent_when_the_unit_of_work_ends_once_each_soonest_first() -> None:
    sent: list[Enqueued] = []
    with jobs.unit_of_work(sent.extend):
        enqueue_job(Job.RECONCILE_ORDER, "o-1", delay=5)
        enqueue_job(Job.RECONCILE_ORDER, "o-1")
        enqueue_job(Job.DELIVER_CALLBACKS, "o-1")
        assert sent == []
    assert [(j.job, j.args, j.delay) for j in sent] == [
        (Job.RECONCILE_ORDER, ("o-1",), 0.0),
        (Job.DELIVER_CALLBACKS, ("o-1",), 0.0),
    ]


def test_a_job_outside_a_unit_of_work_is_an_error_not_a_silent_loss() -> None:
    with pytest.raises(NoUnitOfWork):
        enqueue_job(Job.SWEEP)


def test_a_failing_sender_is_only_a_delay() -> None:
    def broken(_: Sequence[Enqueued]) -> None:
        raise ConnectionError("redis down")

    unit = jobs.begin()
    enqueue_job(Job.RECONCILE_ORDER, "o-1")
    assert jobs.end(unit, broken) == 0


def test_units_of_work_nest_without_leaking_jobs() -> None:
    outer: list[Enqueued] = []
    inner: list[Enqueued] = []
    with jobs.unit_of_work(outer.extend):
        enqueue_job(Job.RECONCILE_ORDER, "a")
        with jobs.unit_of_work(inner.extend):
            enqueue_job(Job.RECONCILE_ORDER, "b")
    assert [j.args for j in outer] == [("a",)]
    assert [j.args for j in inner] == [("b",)]


def test_the_web_publisher_speaks_the_shared_broker_options() -> None:
    check_broker("redis://127.0.0.1:6379/0", BROKER_TRANSPORT_OPTIONS)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("sentinel://127.0.0.1:26379", {}),
        ("amqp://guest@localhost//", {}),
        ("redis://127.0.0.1:6379/0", {"global_keyprefix": "tenant-a:"}),
        ("redis://127.0.0.1:6379/0", {"priority_steps": [0, 5, 9]}),
        ("redis://127.0.0.1:6379/0", {"sep": ":"}),
    ],
    ids=["sentinel", "amqp", "key_prefix", "priority_steps", "separator"],
)
def test_the_web_publisher_refuses_a_broker_it_would_write_unreadable_messages_to(
    url: str, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        check_broker(url, options)


def test_every_job_has_its_queue_and_money_shares_one_with_nothing() -> None:
    from ordersync.jobs import QUEUE_OF, Queue

    assert set(QUEUE_OF) == set(Job)
    assert [job for job in Job if job.queue is Queue.RECONCILE] == [
        Job.RECONCILE_ORDER,
        Job.RECONCILE_ORDERS,
    ]
    # The reconcile queue keeps the single queue's old key: messages queued before an
    # upgrade are still consumed.
    assert Queue.RECONCILE.value == "ordersync"


def test_worker_queues_are_named_by_lane() -> None:
    from ordersync.jobs import Queue

    assert Queue.parse("reconcile, Sweeps") == [Queue.RECONCILE, Queue.SWEEPS]
    with pytest.raises(ValueError, match="unknown queue 'money'"):
        Queue.parse("reconcile,money")
    with pytest.raises(ValueError, match="no queue"):
        Queue.parse(" , ")

"""Jobs: Celery tasks sent only after the unit of work that asked for them has ended.

One mechanism for the web, the worker and the CLI (in the spirit of Polar's
`enqueue_job` and its job queue flushed after the unit of work). Code that has committed
a change calls `enqueue_job(Job.X, ...)`; the job waits in the current unit of work and
is handed to that unit's sender when it ends: a Celery task's `task_postrun`, a web
request, a CLI command. A job whose sending fails (the broker is down) is only a delay:
what it was for is in Postgres, and the sweeper finds it.

Task names and their queues are defined here once, for `@app.task(name=...)`, Celery's
routes, beat, the callers, the web's own message writer and `ordersync worker --queues`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger("ordersync.jobs")


class Queue(StrEnum):
    """Each kind of work waits on its own queue, so a worker given its own queues
    (`ordersync worker --queues reconcile,sweeps`) has capacity nothing else can take:
    a backlog of callbacks or orphan notifications never delays an operation (money
    first). The member names are what `--queues` takes; the values are Redis keys."""

    # The single queue's old name: messages queued before an upgrade are still consumed.
    RECONCILE = "ordersync"
    # Sweeps find what lost messages and dead workers left behind: cheap, and never
    # behind a backlog of reconciles.
    SWEEPS = "ordersync.sweeps"
    NOTIFICATIONS = "ordersync.notifications"
    CALLBACKS = "ordersync.callbacks"
    RETENTION = "ordersync.retention"

    @classmethod
    def parse(cls, names: str) -> list[Queue]:
        """`reconcile,sweeps` -> the queues; ValueError naming an unknown one."""
        queues = []
        for name in filter(None, (part.strip().lower() for part in names.split(","))):
            if name.upper() not in cls.__members__:
                known = ", ".join(member.name.lower() for member in cls)
                raise ValueError(f"unknown queue {name!r} (known: {known})")
            queues.append(cls[name.upper()])
        if not queues:
            raise ValueError("no queue named")
        return queues


# The queue every task is published to when nothing else is said (Celery's default).
QUEUE = Queue.RECONCILE
# kombu's Redis transport options for every process; the web's own message writer
# (service/publisher.py) refuses to start on options it would not follow.
BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": 300,
    # Publishing gives up at once when Redis is down (kombu would otherwise retry for
    # seconds, holding the caller); what was stored is swept later. The worker's own
    # reconnect loop is governed by broker_connection_retry.
    "max_retries": 0,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
}


class Job(StrEnum):
    RECONCILE_ORDER = "ordersync.reconcile_order"
    # Several orders' reconciles in one message, each order on its own (workers/tasks.py
    # reconcile_orders): what arrives together is sent together (batch_reconciles).
    RECONCILE_ORDERS = "ordersync.reconcile_orders"
    DELIVER_CALLBACKS = "ordersync.deliver_callbacks"
    # Many orders' deliveries in one message (workers/delivery_batch.py).
    DELIVER_CALLBACK_BATCH = "ordersync.deliver_callback_batch"
    PROCESS_NOTIFICATION = "ordersync.process_notification"
    SWEEP = "ordersync.sweep"
    SWEEP_LEASES = "ordersync.sweep_leases"
    RETENTION = "ordersync.retention"
    CHECK_ACCOUNTS = "ordersync.check_accounts"

    @property
    def queue(self) -> Queue:
        return QUEUE_OF[self]


QUEUE_OF: dict[Job, Queue] = {
    Job.RECONCILE_ORDER: Queue.RECONCILE,
    Job.RECONCILE_ORDERS: Queue.RECONCILE,
    Job.SWEEP: Queue.SWEEPS,
    Job.SWEEP_LEASES: Queue.SWEEPS,
    Job.PROCESS_NOTIFICATION: Queue.NOTIFICATIONS,
    Job.DELIVER_CALLBACKS: Queue.CALLBACKS,
    Job.DELIVER_CALLBACK_BATCH: Queue.CALLBACKS,
    Job.RETENTION: Queue.RETENTION,
    # A daily read per account: housekeeping, beside retention.
    Job.CHECK_ACCOUNTS: Queue.RETENTION,
}


@dataclass(frozen=True)
class Enqueued:
    job: Job
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    # The request that started the work, so a retry's logs still name it.
    request_id: str | None = None


Sender = Callable[[Sequence[Enqueued]], None]

_pending: ContextVar[list[Enqueued] | None] = ContextVar("ordersync_jobs", default=None)


class NoUnitOfWork(RuntimeError):
    """enqueue_job was called outside a unit of work: the job would never be sent."""


def enqueue_job(job: Job, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
    pending = _pending.get()
    if pending is None:
        raise NoUnitOfWork(job.value)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    pending.append(Enqueued(job, args, kwargs, max(0.0, delay), request_id))


def begin() -> Token[list[Enqueued] | None]:
    """Opens a unit of work; `end` with the returned token sends what it collected."""
    return _pending.set([])


def end(token: Token[list[Enqueued] | None], send: Sender) -> int:
    pending = _pending.get() or []
    _pending.reset(token)
    jobs = coalesce(pending)
    if not jobs:
        return 0
    try:
        send(jobs)
    except Exception as exc:
        log.warning("enqueue_failed", error=type(exc).__name__, jobs=len(jobs))
        return 0
    return len(jobs)


@contextmanager
def unit_of_work(send: Sender) -> Iterator[None]:
    token = begin()
    try:
        yield
    finally:
        end(token, send)


def coalesce(jobs: Sequence[Enqueued]) -> list[Enqueued]:
    """One job per (task, arguments): the soonest wins. A task acts on the latest state
    in Postgres, so asking twice in one unit of work is asking once."""
    if len(jobs) < 2:
        return list(jobs)  # a webhook's one job: nothing to coalesce
    soonest: dict[tuple[str, str, str], Enqueued] = {}
    for job in jobs:
        key = (job.job.value, repr(job.args), repr(sorted(job.kwargs.items())))
        if key not in soonest or job.delay < soonest[key].delay:
            soonest[key] = job
    return list(soonest.values())


# How many orders share one reconcile message. A message's orders are reconciled one
# after the other by one pool thread, so the last waits for the PSP calls of those
# before it: the bound keeps that wait to a few calls, while a Celery message's fetch,
# acknowledgement and task machinery (about a no-op task's CPU) is paid by ten orders.
MAX_ORDERS_PER_MESSAGE = 10


def batch_reconciles(jobs: Sequence[Enqueued]) -> list[Enqueued]:
    """`jobs` with the plain reconciles among them (no delay, no arguments but the order)
    sent MAX_ORDERS_PER_MESSAGE orders to a `reconcile_orders` message, in the order
    they came, each order once; a group of one stays a `reconcile_order` message. Every
    other job, and a reconcile with a delay or `force`, is sent as it is. Each order's
    request id rides in the message (the task binds it while it works on that order)."""
    plain: dict[str, str | None] = {}
    others: list[Enqueued] = []
    for job in jobs:
        if job.job is Job.RECONCILE_ORDER and not job.delay and not job.kwargs:
            (order_id,) = job.args
            if order_id not in plain or plain[order_id] is None:
                plain[order_id] = job.request_id
        else:
            others.append(job)
    if len(plain) < 2:
        return list(jobs)
    batched: list[Enqueued] = []
    orders = list(plain.items())
    for start in range(0, len(orders), MAX_ORDERS_PER_MESSAGE):
        group = orders[start : start + MAX_ORDERS_PER_MESSAGE]
        if len(group) == 1:
            ((order_id, request_id),) = group
            batched.append(Enqueued(Job.RECONCILE_ORDER, (order_id,), request_id=request_id))
            continue
        order_ids = [order_id for order_id, _ in group]
        request_ids = [request_id for _, request_id in group]
        kwargs: dict[str, Any] = {"request_ids": request_ids} if any(request_ids) else {}
        batched.append(Enqueued(Job.RECONCILE_ORDERS, (order_ids,), kwargs))
    return batched + others

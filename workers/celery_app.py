"""The Celery application. Configured lazily from the typed settings, so importing this
module (as `celery -A workers.celery_app` does) reads nothing and connects nowhere."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextvars import Token
from typing import Any

import structlog
from celery import Celery, Task, signals

from ordersync import jobs
from ordersync.jobs import BROKER_TRANSPORT_OPTIONS, QUEUE, QUEUE_OF, Enqueued, Job
from ordersync.logging import configure_logging
from ordersync.settings import get_settings
from workers.delivery_batch import DeliveryBatcher


def celery_config() -> dict[str, Any]:
    settings = get_settings()
    settings.require("redis_url")
    assert settings.redis_url is not None
    return {
        "broker_url": settings.redis_url.get_secret_value(),
        "task_ignore_result": True,
        # No result backend (Celery's DisabledBackend, stateless): one instance per
        # process, not one per pool thread. Each is found by scanning the installed
        # packages' entry points, which every new thread of a 64-thread pool did on its
        # first task (4 % of a worker's GIL samples in a short run, bench.profile).
        "result_backend_thread_safe": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged only when done, and a worker killed mid-task gives the
        # message back: with the operation rows in Postgres, running a task twice is safe,
        # losing one is not.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": dict(BROKER_TRANSPORT_OPTIONS),
        # The web process publishes after its commit; if Redis is down it must fail fast
        # (the sweeper re-enqueues) rather than hold the webhook's answer.
        "broker_connection_timeout": 3,
        "task_publish_retry": False,
        "beat_schedule": {
            "sweep": {"task": Job.SWEEP.value, "schedule": settings.reconcile_sweep_seconds},
            "sweep_leases": {
                "task": Job.SWEEP_LEASES.value,
                "schedule": settings.lease_sweep_seconds,
                # A sweep that waited longer than its own interval is superseded by the next.
                "options": {"expires": settings.lease_sweep_seconds},
            },
            "retention": {
                "task": Job.RETENTION.value,
                "schedule": settings.retention_interval_seconds,
            },
            "check_accounts": {
                "task": Job.CHECK_ACCOUNTS.value,
                "schedule": settings.account_check_interval_seconds,
            },
        },
        "task_default_queue": QUEUE.value,
        # Every job on its own queue (ordersync.jobs): beat, callers and Celery alike.
        "task_routes": {job.value: {"queue": queue.value} for job, queue in QUEUE_OF.items()},
    }


app = Celery("ordersync", include=["workers.tasks"])
app.add_defaults(celery_config)


def _send_delivery_batch(order_ids: Sequence[str]) -> None:
    job = Job.DELIVER_CALLBACK_BATCH
    app.send_task(job.value, (list(order_ids),), queue=job.queue.value)


# In a worker process (from worker_init on), the callback deliveries its units of work
# ask for without a delay go out many orders to a message (workers/delivery_batch.py);
# the CLI and the web send each job as it is.
_deliveries: DeliveryBatcher | None = None


def send_jobs(pending: Sequence[Enqueued]) -> None:
    """The worker's and the CLI's sender for a unit of work's jobs (ordersync.jobs): the
    orders a unit of work asks to reconcile together (a sweep's, a resume's) go many to
    a message (jobs.batch_reconciles)."""
    for job in jobs.batch_reconciles(pending):
        if _deliveries is not None and job.job is Job.DELIVER_CALLBACKS and not job.delay:
            _deliveries.add(job.args[0])
            continue
        app.send_task(
            job.job.value,
            job.args,
            job.kwargs,
            countdown=job.delay or None,
            queue=job.job.queue.value,
            headers={"request_id": job.request_id},
        )


# Each task is a unit of work: its log context is bound once here, and the jobs it asked
# for are sent when it has returned, every transaction of it committed.
_units: dict[str, Token[list[Enqueued] | None]] = {}


@signals.task_prerun.connect
def _task_started(task_id: str, task: Task, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    context: dict[str, Any] = {"task_id": task_id, "task": task.name}
    request_id = (task.request.headers or {}).get("request_id")
    if request_id:
        context["request_id"] = request_id
    structlog.contextvars.bind_contextvars(**context)
    _units[task_id] = jobs.begin()


@signals.task_postrun.connect
def _task_finished(task_id: str, **_: Any) -> None:
    token = _units.pop(task_id, None)
    if token is not None:
        jobs.end(token, send_jobs)
    structlog.contextvars.clear_contextvars()


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


# The collector's young generation is collected every GC_GEN0_THRESHOLD container
# allocations net of frees (CPython's default 700): an operation allocates thousands
# (rows as dicts, JSON, log events), so at the default a worker runs a collection every
# few operations, and every tenth of tenth a full one. Fewer, larger young collections
# cost less CPU; full collections stay as frequent relative to them.
GC_GEN0_THRESHOLD = 50_000


@signals.worker_init.connect
def _batch_deliveries(**_: Any) -> None:
    global _deliveries
    _deliveries = DeliveryBatcher(_send_delivery_batch)


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _send_pending_deliveries(**_: Any) -> None:
    # What is left is only a delay (the sweeper finds it), but need not be one.
    if _deliveries is not None:
        _deliveries.flush()


@signals.worker_init.connect
def _tune_collector(**_: Any) -> None:
    # Before the prefork pool forks, so its children inherit it.
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


@signals.worker_ready.connect
@signals.worker_process_init.connect
def _freeze_startup_objects(**_: Any) -> None:
    """Everything alive once the worker is up (modules, Celery's app, the task
    registry: hundreds of thousands of objects) lives as long as the process: moved out
    of the collector's sight, a full collection no longer walks them all, which was a
    pause of tens of milliseconds in the middle of whatever operation triggered it."""
    gc.collect()
    gc.freeze()

"""The worker baseline: a Celery app with ordersync's own broker settings (acks late,
prefetch 1, same Redis) and one task that does nothing. How fast a worker drains it at a
given pool and concurrency is the ceiling any real task is compared with.

`celery -A bench.noop_app worker --pool threads --concurrency 16`.
"""

from __future__ import annotations

from celery import Celery

from workers.celery_app import celery_config

QUEUE = "bench-noop"

app = Celery("bench-noop")
# Lazily, like ordersync's app: read when first used, after the bench set REDIS_URL.
app.add_defaults(lambda: {**celery_config(), "task_default_queue": QUEUE, "beat_schedule": {}})


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(_: int) -> None:
    return None

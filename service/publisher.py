"""Sends Celery tasks after their commits: in batches, off the request, on the event loop.

A webhook is answered as soon as it is committed; the task that acts on it is handed
here and published shortly after, many per Redis round trip when traffic is heavy. If
publishing fails (Redis down) or the process dies with tasks still queued, nothing is
lost: what was stored is marked in Postgres and the sweeper enqueues it again.

The messages are Celery's task protocol v2 in kombu's Redis envelope, written with the
async Redis client: kombu's own publish costs a thread hop and about half a millisecond
of CPU per message, which was most of a webhook's cost. tests/service/test_publisher.py
holds the format to what kombu itself writes, and every integration test has the real
worker consume it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ordersync.errors import ConfigError
from ordersync.jobs import QUEUE, Enqueued, Queue

log = structlog.get_logger("ordersync.publisher")

MAX_BATCH = 500
# What this writer speaks: plain LPUSH onto the queue's own key, priority 0, no prefix.
_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")
_UNSPOKEN_OPTIONS = ("global_keyprefix", "priority_steps", "sep", "queue_order_strategy")
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Message:
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    queue: Queue = QUEUE


def celery_message(message: Message, task_id: str | None = None) -> bytes:
    """The message as kombu's Redis transport stores it (Celery task protocol v2)."""
    task_id = task_id or str(uuid.uuid4())
    body = [
        list(message.args),
        message.kwargs,
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": message.task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(message.args),
            "kwargsrepr": repr(message.kwargs),
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            "request_id": message.request_id,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": message.queue.value},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


# (queue, message) pairs; one call per batch.
Send = Callable[[Sequence[tuple[Queue, bytes]]], Awaitable[Any]]


def check_broker(broker_url: str, transport_options: dict[str, Any]) -> None:
    """Refuses a broker this writer would write unreadable messages to: a transport other
    than plain Redis, or transport options that move where kombu reads (a key prefix,
    priority steps, another separator or queue order)."""
    if not broker_url.startswith(_SCHEMES):
        raise ConfigError(
            "REDIS_URL: the web process publishes to plain Redis only "
            "(redis://, rediss://, redis+socket://)"
        )
    unspoken = sorted(set(transport_options) & set(_UNSPOKEN_OPTIONS))
    if unspoken:
        raise ConfigError(
            f"broker transport options {unspoken} change kombu's Redis keys, which the web "
            "process's publisher does not follow"
        )


class Publisher:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def send(self, jobs: Sequence[Enqueued]) -> None:
        """A unit of work's jobs (ordersync.jobs): queued here, published shortly after."""
        for job in jobs:
            self._queue.put_nowait(
                Message(job.job.value, job.args, job.kwargs, job.request_id, job.job.queue)
            )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ordersync-publisher")

    async def stop(self, timeout: float = 5.0) -> None:
        """Publishes what is queued (bounded by `timeout`), then stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._send([(message.queue, celery_message(message)) for message in batch])
            except Exception as exc:
                # Stored and committed already: the sweeper will find them.
                log.warning("enqueue_failed", error=type(exc).__name__, messages=len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()


def redis_sender(redis: Any) -> Send:
    """LPUSH onto each queue's list, like kombu; one round trip for the whole batch."""

    async def send(messages: Sequence[tuple[Queue, bytes]]) -> None:
        by_queue: dict[Queue, list[bytes]] = {}
        for queue, message in messages:
            by_queue.setdefault(queue, []).append(message)
        if len(by_queue) == 1:
            ((queue, batch),) = by_queue.items()
            await redis.lpush(queue.value, *batch)
            return
        async with redis.pipeline(transaction=False) as pipe:
            for queue, batch in by_queue.items():
                pipe.lpush(queue.value, *batch)
            await pipe.execute()

    return send

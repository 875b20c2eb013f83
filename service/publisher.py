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
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ordersync.errors import ConfigError
from ordersync.jobs import QUEUE, Enqueued, Queue, batch_reconciles

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


def _envelope(
    task: str, task_id: str, args: str, kwargs: str, request_id: str | None, body: str
) -> dict[str, Any]:
    """Celery task protocol v2 in kombu's Redis envelope; `routing_key` and `delivery_tag`
    are filled in by celery_message."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
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
            "argsrepr": args,
            "kwargsrepr": kwargs,
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            "request_id": request_id,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": _ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": _DELIVERY_TAG,
        },
    }


# The envelope is rendered once with a marker in each place a message fills in, and cut
# at the markers: a message is then its values, each JSON-encoded on its own, joined
# between the fixed pieces. The bytes are json.dumps of the whole envelope (the test
# holds them to it); building and encoding the dict per message was most of a publish.
_MARK = "\ue000"
_ROUTING_KEY, _DELIVERY_TAG = _MARK + "routing_key", _MARK + "delivery_tag"
_TEMPLATE = json.dumps(
    _envelope(
        task=_MARK + "task",
        task_id=_MARK + "id",
        args=_MARK + "args",
        kwargs=_MARK + "kwargs",
        request_id=_MARK + "request_id",
        body=_MARK + "body",
    )
)
_FILLED = re.compile(r'"\\ue000(\w+)"')  # a marker as json.dumps escapes it
_ORDER = _FILLED.findall(_TEMPLATE)
_PIECES = _FILLED.split(_TEMPLATE)[::2]
_quote = json.encoder.encode_basestring_ascii  # what json.dumps does to a str
_BODY_TAIL = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def _uuid4() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) makes, without the object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def celery_message(message: Message, task_id: str | None = None) -> bytes:
    """The message as kombu's Redis transport stores it (Celery task protocol v2)."""
    task_id = task_id or _uuid4()
    body = "[" + json.dumps(list(message.args)) + ", " + json.dumps(message.kwargs) + _BODY_TAIL
    values = {
        "task": _quote(message.task),
        "id": _quote(task_id),
        "args": _quote(repr(message.args)),
        "kwargs": _quote(repr(message.kwargs)),
        "request_id": "null" if message.request_id is None else _quote(message.request_id),
        "body": '"' + base64.b64encode(body.encode()).decode() + '"',
        "routing_key": _quote(message.queue.value),
        "delivery_tag": '"' + _uuid4() + '"',
    }
    parts = [_PIECES[0]]
    for name, piece in zip(_ORDER, _PIECES[1:], strict=True):
        parts.append(values[name])
        parts.append(piece)
    return "".join(parts).encode()


def _message(job: Enqueued) -> Message:
    return Message(job.job.value, job.args, job.kwargs, job.request_id, job.job.queue)


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
        self._queue: asyncio.Queue[Enqueued] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def send(self, jobs: Sequence[Enqueued]) -> None:
        """A unit of work's jobs (ordersync.jobs): queued here, published shortly after."""
        for job in jobs:
            self._queue.put_nowait(job)

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
                # The orders of the webhooks answered together (one group commit's) go
                # many to a reconcile message: one message's worker overhead for many.
                messages = [_message(job) for job in batch_reconciles(batch)]
                await self._send([(message.queue, celery_message(message)) for message in messages])
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

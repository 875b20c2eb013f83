"""The web process writes Celery messages itself; they must be what kombu writes."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from devrig.devstack import RedisServer

from ordersync.jobs import Job, Queue
from service.publisher import _ORIGIN, QUEUE, Message, celery_message


@pytest.fixture(scope="module")
def kombu_message(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    saved = dict(os.environ)
    os.environ.update(DATABASE_URL="postgresql://unused", REDIS_URL=server.url)
    try:
        from celery import Celery

        from ordersync.settings import get_settings
        from workers.celery_app import celery_config

        get_settings.cache_clear()
        app = Celery("ordersync-format-check")
        app.config_from_object(celery_config())
        app.send_task(
            "ordersync.reconcile_order",
            ("o-1",),
            {"force": True},
            headers={"request_id": "r-1"},
            retry=False,
        )
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        (raw,) = client.lrange(QUEUE.value, 0, -1)
        message = json.loads(raw)
        # Where kombu puts each job, by the routes every process shares.
        for job in Job:
            app.send_task(job.value, ("x",), retry=False)
        queued = [
            (queue, json.loads(item))
            for queue in Queue
            for item in client.lrange(queue.value, 0, -1)
        ]
        message["_routed"] = {
            job: [
                (queue, m["properties"]["delivery_info"])
                for queue, m in queued
                if m["headers"]["task"] == job.value and m["headers"]["argsrepr"] == "('x',)"
            ]
            for job in Job
        }
        yield message
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        server.stop()


def test_our_message_has_kombus_shape(kombu_message: dict) -> None:
    ours = json.loads(
        celery_message(Message("ordersync.reconcile_order", ("o-1",), {"force": True}, "r-1"))
    )
    kombu_message = {k: v for k, v in kombu_message.items() if k != "_routed"}
    assert set(ours) == set(kombu_message)
    assert set(ours["headers"]) == set(kombu_message["headers"])
    # reply_to names a result queue; these tasks return nothing anyone reads.
    assert set(ours["properties"]) == set(kombu_message["properties"]) - {"reply_to"}
    assert ours["properties"]["delivery_info"] == kombu_message["properties"]["delivery_info"]
    for key in ("content-type", "content-encoding"):
        assert ours[key] == kombu_message[key]
    for key in ("task", "lang", "retries", "timelimit", "request_id", "argsrepr"):
        assert ours["headers"][key] == kombu_message["headers"][key]
    assert ours["headers"]["id"] == ours["headers"]["root_id"]
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]

    def body(message: dict) -> object:
        return json.loads(base64.b64decode(message["body"]))

    assert body(ours) == body(kombu_message)


@pytest.mark.parametrize("job", list(Job), ids=[job.name.lower() for job in Job])
def test_each_job_goes_to_the_queue_kombu_routes_it_to(kombu_message: dict, job: Job) -> None:
    # Found once, on the job's own queue's list, with kombu's delivery_info.
    ((queue, info),) = kombu_message["_routed"][job]
    assert queue is job.queue
    ours = json.loads(celery_message(Message(job.value, ("x",), queue=job.queue)))
    assert info == ours["properties"]["delivery_info"]


def _as_json_dumps_writes_it(message: Message, task_id: str, delivery_tag: str) -> bytes:
    """The envelope built as a dict and encoded whole: what celery_message wrote before
    it was rendered from a template."""
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
            "delivery_tag": delivery_tag,
        },
    }
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "message",
    [
        Message("ordersync.reconcile_order", ("o-1",), {"force": True}, "r-1"),
        Message("ordersync.process_adyen_notification", (42,), queue=Queue.NOTIFICATIONS),
        Message('task "quoted" \\ é', ('o"1', "ü\n", None, 3.5), {"k": ["é", {"x": None}]}, 'r"'),
    ],
    ids=["reconcile", "no-request-id", "escapes"],
)
def test_the_template_writes_the_bytes_json_dumps_writes(message: Message) -> None:
    ours = celery_message(message, task_id="6f1c-task")
    tag = json.loads(ours)["properties"]["delivery_tag"]
    assert ours == _as_json_dumps_writes_it(message, "6f1c-task", tag)
    # Fresh ids are random version 4 UUIDs, as str(uuid.uuid4()) writes them.
    fresh = json.loads(celery_message(message))
    for value in (fresh["headers"]["id"], fresh["properties"]["delivery_tag"]):
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_the_orders_of_webhooks_answered_together_share_a_reconcile_message() -> None:
    import asyncio

    from ordersync.jobs import Enqueued
    from service.publisher import Publisher

    published: list[list[dict]] = []

    async def send(messages: list[tuple[Queue, bytes]]) -> None:
        published.append([json.loads(message) for _, message in messages])

    async def run() -> None:
        publisher = Publisher(send)
        # Three requests' units of work end before the publisher runs (one group commit).
        for order_id in ("a", "b", "c"):
            publisher.send([Enqueued(Job.RECONCILE_ORDER, (order_id,), request_id=f"r-{order_id}")])
        await publisher.start()
        await publisher.stop()

    asyncio.run(run())
    ((message,),) = published
    assert message["headers"]["task"] == Job.RECONCILE_ORDERS.value
    assert message["properties"]["delivery_info"]["routing_key"] == Queue.RECONCILE.value
    body = json.loads(base64.b64decode(message["body"]))
    assert body[:2] == [[["a", "b", "c"]], {"request_ids": ["r-a", "r-b", "r-c"]}]

"""The Celery application. Configured lazily from the typed settings, so importing this
module (as `celery -A workers.celery_app` does) reads nothing and connects nowhere."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ordersync.logging import configure_logging
from ordersync.settings import get_settings


def celery_config() -> dict[str, Any]:
    settings = get_settings()
    settings.require("redis_url")
    assert settings.redis_url is not None
    return {
        "broker_url": settings.redis_url.get_secret_value(),
        "task_ignore_result": True,
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
        "broker_transport_options": {
            "visibility_timeout": 300,
            # Publishing gives up at once when Redis is down (kombu would otherwise retry
            # for seconds, holding the webhook's answer); what was stored is swept later.
            # The worker's own reconnect loop is governed by broker_connection_retry.
            "max_retries": 0,
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
        },
        # The web process publishes after its commit; if Redis is down it must fail fast
        # (the sweeper re-enqueues) rather than hold the webhook's answer.
        "broker_connection_timeout": 3,
        "task_publish_retry": False,
        "beat_schedule": {
            "sweep": {"task": "ordersync.sweep", "schedule": settings.reconcile_sweep_seconds},
            "retention": {
                "task": "ordersync.retention",
                "schedule": settings.retention_interval_seconds,
            },
        },
        "task_default_queue": "ordersync",
    }


app = Celery("ordersync", include=["workers.tasks"])
app.add_defaults(celery_config)


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)

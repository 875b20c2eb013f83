"""Prometheus metrics shared by the web and worker processes.

A process with several children (the Celery prefork pool, uvicorn with --workers) keeps
its metrics in files under PROMETHEUS_MULTIPROC_DIR, which must be set before
prometheus_client is first imported; `exposition()` then merges every process's files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WEBHOOKS = Counter("ordersync_webhooks_received_total", "Webhooks received", ["source", "outcome"])
# `account` is one of the configured accounts (contract §6): a bounded set.
PSP_REQUESTS = Counter(
    "ordersync_psp_requests_total",
    "PSP requests made",
    ["provider", "operation", "outcome", "account"],
)
PSP_LATENCY = Histogram(
    "ordersync_psp_request_seconds",
    "PSP request latency",
    ["provider", "operation"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("ordersync_operation_retries_total", "Operation retries scheduled", ["operation"])
FLAGGED = Counter("ordersync_orders_flagged_total", "Orders flagged", ["flag"])
CONFIRMATION = Histogram(
    "ordersync_snapshot_to_confirmation_seconds",
    "From receiving the shop's snapshot to the PSP confirming an operation it asked for",
    ["provider", "operation"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
CALLBACKS = Counter(
    "ordersync_callbacks_total",
    "Deliveries of the service's events to the shop",
    ["event_type", "outcome"],
)
# The newest heartbeat of any process of the worker: a dead child's file stays, but
# holds an older time than a live one's.
HEARTBEAT = Gauge(
    "ordersync_worker_heartbeat_timestamp_seconds",
    "Unix time of the worker's last task or sweep",
    multiprocess_mode="max",
)

# `ordersync accounts check`, run daily by beat: 1 while the account's credentials are
# accepted, 0 once refused (Klarna disables credentials left unused for months).
ACCOUNT_CHECK = Gauge(
    "ordersync_account_credentials_ok",
    "Whether the account's credentials were accepted at the last check (1) or not (0)",
    ["provider", "account"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_CHECK_TIME = Gauge(
    "ordersync_account_check_timestamp_seconds",
    "Unix time of the last credentials check of the account",
    ["provider", "account"],
    multiprocess_mode="max",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def account_checked(provider: str, account: str, ok: bool) -> None:
    ACCOUNT_CHECK.labels(provider=provider, account=account).set(1 if ok else 0)
    ACCOUNT_CHECK_TIME.labels(provider=provider, account=account).set(time.time())


def psp_request(
    provider: str, operation: str, outcome: str, seconds: float, *, account: str = "default"
) -> None:
    PSP_REQUESTS.labels(
        provider=provider, operation=operation, outcome=outcome, account=account
    ).inc()
    PSP_LATENCY.labels(provider=provider, operation=operation).observe(seconds)


def heartbeat() -> None:
    HEARTBEAT.set(time.time())


class Metrics:
    """A narrow facade so handlers say what happened, not how it is counted."""

    def webhook(self, *, source: str, outcome: str, count: int = 1) -> None:
        if count:
            WEBHOOKS.labels(source=source, outcome=outcome).inc(count)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def clear_multiprocess_dir(path: str) -> None:
    """A restarted container keeps its emptyDir: files of the previous run's processes
    would be added to this run's counters."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def process_registry() -> CollectorRegistry:
    """This process's metrics, or all processes' when in multiprocess mode."""
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


class _Fixed(Collector):
    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


def exposition(extra: Iterable[GaugeMetricFamily] = ()) -> bytes:
    """The text format of the process's metrics plus `extra`, computed at scrape time."""
    body = generate_latest(process_registry())
    families = list(extra)
    if families:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        body += generate_latest(registry)
    return body


def gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family

"""GET /metrics and GET /openapi.json."""

from __future__ import annotations

import asyncio
import json
from functools import cache
from importlib import resources
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from domain.snapshot import ShopEvent
from ordersync import metrics
from service import health_figures
from service.adyen_webhook import AdyenNotificationRequest
from service.state import AppState

log = structlog.get_logger("ordersync.web")

QUERY_TIMEOUT_SECONDS = 2.0


async def database_gauges(state: AppState) -> list[GaugeMetricFamily]:
    """Backlogs read from Postgres at scrape time. Each query walks a partial index that
    holds only the unfinished rows, so a scrape costs little while things are healthy.
    The console's health page shows the same figures (service/health_figures.py)."""
    async with asyncio.timeout(QUERY_TIMEOUT_SECONDS), state.probes.connection() as conn:
        figures = await health_figures.read(conn)
    # Every label value is exported, zero included, so alerts see a series, not absence.
    gauges = [
        metrics.gauge(
            "ordersync_inbox_backlog",
            "Stored webhooks not processed yet",
            ["source"],
            [([s], float(n)) for s, n in figures.inbox_backlog.items()],
        ),
        metrics.gauge(
            "ordersync_inbox_oldest_unprocessed_seconds",
            "Age of the oldest stored webhook not processed yet (0 when none)",
            ["source"],
            [([s], age) for s, age in figures.inbox_oldest_seconds.items()],
        ),
        metrics.gauge(
            "ordersync_inbox_unmatched",
            "Adyen notifications that matched no order or operation of ours yet (another"
            " system's payment on a shared merchant account, usually); retried with back-off"
            " until NOTIFICATION_ORPHAN_SECONDS, and not in the backlog",
            [],
            [([], float(figures.inbox_unmatched))],
        ),
        metrics.gauge(
            "ordersync_callbacks_backlog",
            "Events for the shop not delivered yet",
            [],
            [([], float(figures.callbacks_backlog))],
        ),
        metrics.gauge(
            "ordersync_callbacks_oldest_undelivered_seconds",
            "Age of the oldest event for the shop not delivered yet (0 when none)",
            [],
            [([], figures.callbacks_oldest_seconds)],
        ),
        metrics.gauge(
            "ordersync_callbacks_failing",
            "Undelivered events for the shop whose last delivery attempt failed",
            [],
            [([], float(figures.callbacks_failing))],
        ),
        metrics.gauge(
            "ordersync_callbacks_parked",
            "Events the shop refused too often, parked so later ones go on (none: 0)",
            [],
            [([], float(figures.callbacks_parked))],
        ),
        metrics.gauge(
            "ordersync_orders_flagged",
            "Orders carrying a flag now",
            ["flag"],
            [([f], float(n)) for f, n in figures.flagged.items()],
        ),
        metrics.gauge(
            "ordersync_operations_in_flight",
            "PSP operations that may still take effect, by status",
            ["status"],
            [([s], float(n)) for s, n in figures.in_flight.items()],
        ),
        metrics.gauge(
            "ordersync_operations_in_flight_oldest_seconds",
            "Age of the oldest PSP operation in flight (0 when none)",
            [],
            [([], figures.in_flight_oldest_seconds)],
        ),
    ]
    if figures.last_sweep is not None:
        gauges.append(
            metrics.gauge(
                "ordersync_last_sweep_timestamp_seconds",
                "Unix time the worker's last periodic sweep finished",
                [],
                [([], figures.last_sweep.timestamp())],
            )
        )
    return gauges


async def metrics_endpoint(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    extra: list[GaugeMetricFamily] = []
    try:
        extra = await database_gauges(state)
        up = 1.0
    except Exception as exc:  # a scrape must not fail because Postgres is down
        log.warning("metrics_database_unavailable", error=type(exc).__name__)
        up = 0.0
    extra.append(
        metrics.gauge(
            "ordersync_database_up", "Whether the scrape could read Postgres", [], [([], up)]
        )
    )
    return Response(metrics.exposition(extra), media_type=metrics.CONTENT_TYPE)


# Request bodies described by the models that validate them, so the document states
# every limit they hold (patterns, lengths, ranges, enums, item counts); openapi.json
# holds the rest (operations, answers) and refers to these by name.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "ShopEvent": ShopEvent,
    "AdyenNotification": AdyenNotificationRequest,
}
_REF = "#/components/schemas/{model}"


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("service").joinpath("openapi.json").read_text()
    document: dict[str, Any] = json.loads(text)
    schemas: dict[str, Any] = document["components"]["schemas"]
    for name, model in REQUEST_MODELS.items():
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        for definition, body in schema.pop("$defs", {}).items():
            # One name, one schema: a model's part never shadows an answer's schema.
            assert schemas.get(definition, body) == body, definition
            schemas[definition] = body
        schemas[name] = schema
    return document


async def openapi_endpoint(_: Request) -> Response:
    return JSONResponse(openapi_document())

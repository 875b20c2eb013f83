"""GET /metrics and GET /openapi.json."""

from __future__ import annotations

import asyncio
import json
from functools import cache
from importlib import resources
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from data import inbox, orders, outbox
from domain.planner import FLAGS
from ordersync import metrics
from service.state import AppState

log = structlog.get_logger("ordersync.web")

QUERY_TIMEOUT_SECONDS = 2.0
SOURCES = ("shop", "adyen")


async def database_gauges(state: AppState) -> list[GaugeMetricFamily]:
    """Backlogs read from Postgres at scrape time. Each query walks a partial index that
    holds only the unfinished rows, so a scrape costs little while things are healthy."""
    async with asyncio.timeout(QUERY_TIMEOUT_SECONDS), state.probes.connection() as conn:
        inbox_rows = await inbox.backlog(conn)
        outbox_row = await outbox.backlog(conn)
        flag_counts = await orders.flag_counts(conn)
    backlog = {row["source"]: float(row["backlog"]) for row in inbox_rows}
    oldest = {row["source"]: float(row["oldest"]) for row in inbox_rows}
    # Every label value is exported, zero included, so alerts see a series, not absence.
    return [
        metrics.gauge(
            "ordersync_inbox_backlog",
            "Stored webhooks not processed yet",
            ["source"],
            [([s], backlog.get(s, 0.0)) for s in SOURCES],
        ),
        metrics.gauge(
            "ordersync_inbox_oldest_unprocessed_seconds",
            "Age of the oldest stored webhook not processed yet (0 when none)",
            ["source"],
            [([s], oldest.get(s, 0.0)) for s in SOURCES],
        ),
        metrics.gauge(
            "ordersync_callbacks_backlog",
            "Events for the shop not delivered yet",
            [],
            [([], float(outbox_row["backlog"]))],
        ),
        metrics.gauge(
            "ordersync_callbacks_oldest_undelivered_seconds",
            "Age of the oldest event for the shop not delivered yet (0 when none)",
            [],
            [([], float(outbox_row["oldest"]))],
        ),
        metrics.gauge(
            "ordersync_callbacks_parked",
            "Events the shop refused too often, parked so later ones go on (none: 0)",
            [],
            [([], float(outbox_row["parked"]))],
        ),
        metrics.gauge(
            "ordersync_orders_flagged",
            "Orders carrying a flag now",
            ["flag"],
            [([f], float(flag_counts.get(f, 0))) for f in FLAGS],
        ),
    ]


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


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("service").joinpath("openapi.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


async def openapi_endpoint(_: Request) -> Response:
    return JSONResponse(openapi_document())

"""The service's health in figures, read from Postgres: /metrics exports them as gauges
and the console shows them, so the two always agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from data import inbox, job_runs, orders, outbox
from domain.planner import FLAGS, IN_FLIGHT

SOURCES = ("shop", "adyen")


@dataclass
class HealthFigures:
    inbox_backlog: dict[str, int] = field(default_factory=dict)
    inbox_oldest_seconds: dict[str, float] = field(default_factory=dict)
    # Adyen notifications that matched nothing of ours yet: apart from the backlog.
    inbox_unmatched: int = 0
    callbacks_backlog: int = 0
    callbacks_oldest_seconds: float = 0.0
    # Undelivered events whose last delivery attempt failed.
    callbacks_failing: int = 0
    # Events the shop refused too often, parked so that later ones go on.
    callbacks_parked: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    in_flight_oldest_seconds: float = 0.0
    last_sweep: datetime | None = None


async def read(conn: AsyncConnection[DictRow]) -> HealthFigures:
    inbox_rows = await inbox.backlog(conn)
    unmatched = await inbox.unmatched(conn)
    outbox_row = await outbox.backlog(conn)
    flag_counts = await orders.flag_counts(conn)
    flight = await orders.in_flight_counts(conn)
    last_sweep = await job_runs.last_run(conn, job_runs.SWEEP)
    return HealthFigures(
        inbox_backlog={s: 0 for s in SOURCES}
        | {r["source"]: int(r["backlog"]) for r in inbox_rows},
        inbox_oldest_seconds={s: 0.0 for s in SOURCES}
        | {r["source"]: float(r["oldest"]) for r in inbox_rows},
        inbox_unmatched=int(unmatched),
        callbacks_backlog=int(outbox_row["backlog"]),
        callbacks_oldest_seconds=float(outbox_row["oldest"]),
        callbacks_failing=int(outbox_row["failing"]),
        callbacks_parked=int(outbox_row["parked"]),
        flagged={f: flag_counts.get(f, 0) for f in FLAGS},
        in_flight={s: 0 for s in IN_FLIGHT} | {r["status"]: int(r["n"]) for r in flight},
        in_flight_oldest_seconds=max((float(r["oldest"]) for r in flight), default=0.0),
        last_sweep=last_sweep,
    )

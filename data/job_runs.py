"""When each periodic job last finished (the console's health: "last sweep")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection

Row = dict[str, Any]

# The periodic sweep (workers/sweeper.py).
SWEEP = "sweep"

FINISHED = """
INSERT INTO job_runs (name, finished_at) VALUES (%(name)s, now())
ON CONFLICT (name) DO UPDATE SET finished_at = now()
"""
LAST_RUN = "SELECT finished_at FROM job_runs WHERE name = %(name)s"


def finished(conn: Connection[Row], name: str) -> None:
    conn.execute(FINISHED, {"name": name})


async def last_run(conn: AsyncConnection[Row], name: str) -> datetime | None:
    row = await (await conn.execute(LAST_RUN, {"name": name})).fetchone()
    return None if row is None else row["finished_at"]

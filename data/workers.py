"""Worker incarnations and the lease tokens that name them.

A lease token is a UUID whose first 8 bytes are the incarnation of the worker process
that took the lease (the rest random): one per worker start, inherited by its pool's
processes. When a node starts it records its incarnation and gets its predecessor's
back; the leases that one held are released at once, since no process of a node that
is starting can still be renewing them (a crash, a kill, an OOM). A node name shared by
two live workers (a misconfiguration) costs a repeated request at worst: the resume
reads the PSP first and resends under the same idempotency key.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from psycopg import Connection

Row = dict[str, Any]

_incarnation: uuid.UUID | None = None


def incarnation() -> uuid.UUID:
    """This process's incarnation; a worker fixes it before its pool forks."""
    global _incarnation
    if _incarnation is None:
        _incarnation = uuid.uuid4()
    return _incarnation


def lease_token() -> uuid.UUID:
    return uuid.UUID(bytes=incarnation().bytes[:8] + os.urandom(8))


# `old` reads the statement's snapshot: the row as it was before this upsert.
REGISTER = """
WITH old AS (SELECT incarnation FROM worker_incarnations WHERE node = %(node)s)
INSERT INTO worker_incarnations (node, incarnation) VALUES (%(node)s, %(incarnation)s)
ON CONFLICT (node) DO UPDATE SET incarnation = excluded.incarnation, started_at = now()
RETURNING (SELECT incarnation FROM old) AS previous
"""
# The predecessor's leases end now: the reconciler then takes each over as a lease that
# ran out (outcome unknown, the PSP read first). A parked lease (workers/poison.py) is
# an operator's to release.
RELEASE_LEASES = """
UPDATE operations SET lease_until = now(), updated_at = now()
WHERE status = 'sent' AND lease_token BETWEEN %(low)s AND %(high)s
  AND lease_until > now() AND lease_until < %(parked)s
RETURNING order_id
"""


def register(conn: Connection[Row], node: str) -> uuid.UUID | None:
    """Records this process's incarnation for `node`; the one it replaces, if any."""
    row = conn.execute(REGISTER, {"node": node, "incarnation": incarnation()}).fetchone()
    return None if row is None else row["previous"]


def release_leases(conn: Connection[Row], previous: uuid.UUID, parked: str) -> list[str]:
    """Ends every lease `previous` held; the orders they belong to."""
    prefix = previous.bytes[:8]
    params = {
        "low": uuid.UUID(bytes=prefix + bytes(8)),
        "high": uuid.UUID(bytes=prefix + b"\xff" * 8),
        "parked": parked,
    }
    return [row["order_id"] for row in conn.execute(RELEASE_LEASES, params).fetchall()]

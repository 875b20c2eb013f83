"""Migrations on a real Postgres: two pods migrating a fresh database at once, and the
account migration (0031) filling existing orders in batches, safe to run again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import psycopg
import pytest
from devrig.devstack import database_named
from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList, read_sql_migration

from ordersync.db import _yoyo_url, migrate


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield database_named(database_url, name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _migrations() -> list[Any]:
    """The project's migrations, yoyo's own (`__…`) left out."""
    directory = str(resources.files("migrations"))
    return [m for m in read_migrations(directory) if not m.id.startswith("__")]


def _migrate_before(database: str, first_left_out: str) -> None:
    """The database as a release before migration `first_left_out` left it."""
    backend = get_backend(_yoyo_url(database))
    before = MigrationList(m for m in _migrations() if m.id < first_left_out)
    try:
        with backend.lock():
            backend.apply_migrations(backend.to_apply(before))
    finally:
        backend.connection.close()


def _roll_back(database: str, *ids: str) -> None:
    """Migrations `ids` rolled back, as an operator's `yoyo rollback` does."""
    backend = get_backend(_yoyo_url(database))
    try:
        with backend.lock():
            backend.rollback_migrations(MigrationList(m for m in _migrations() if m.id in ids))
    finally:
        backend.connection.close()


def test_two_pods_migrating_a_fresh_database_at_once_both_succeed(fresh_database: str) -> None:
    # The one that waits must not sit inside a statement: CREATE INDEX CONCURRENTLY in
    # the other's run would wait for it and fail at its lock_timeout (LockNotAvailable).
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(migrate(fresh_database))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [r for r in results if isinstance(r, Exception)], results
    applied = sorted(results, key=len)
    assert applied[0] == [] and "0031_order_account" in applied[1]


def test_the_account_migration_fills_existing_orders_and_runs_again(fresh_database: str) -> None:
    _migrate_before(fresh_database, "0031")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                                desired_amount)
            SELECT 'o-' || n, 1, 'klarna', 'k-' || n, 'EUR', 'open', '{}'::jsonb, 100
            FROM generate_series(1, 6000) AS n
            """
        )
    assert "0031_order_account" in migrate(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        counts = conn.execute("SELECT account, count(*) FROM orders GROUP BY account").fetchall()
        assert counts == [("default", 6000)]
        # Rows written by a pod still on the previous release get the default too, and
        # NOT NULL holds (validated, not NOT VALID).
        conn.execute(
            "INSERT INTO orders (id, version, provider, psp_order_id, currency, status,"
            " snapshot, desired_amount) VALUES ('late', 1, 'klarna', 'k-late', 'EUR', 'open',"
            " '{}', 1)"
        )
        row = conn.execute("SELECT account FROM orders WHERE id = 'late'").fetchone()
        assert row == ("default",)
        valid = conn.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'orders_account_set'"
        ).fetchone()
        assert valid == (True,)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE orders SET account = NULL WHERE id = 'late'")
    # Interrupted halfway, it runs again from the start without failing.
    _, _, statements = read_sql_migration(
        str(resources.files("migrations") / "0031_order_account.sql")
    )
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_the_inbox_bodies_migration_moves_every_body_and_keeps_pruned_rows(
    fresh_database: str,
) -> None:
    _migrate_before(fresh_database, "0061")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # 3 rows with their bodies, 2 whose bodies retention had already nulled.
        conn.execute(
            """
            INSERT INTO inbox (source, event_key, event_type, payload)
            SELECT 'shop', 'msg_' || n, 'order.updated',
                   CASE WHEN n <= 3 THEN jsonb_build_object('n', n) END
            FROM generate_series(1, 5) AS n
            """
        )
    assert "0061_inbox_bodies" in migrate(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        moved = conn.execute(
            "SELECT i.event_key, b.payload FROM inbox i"
            " LEFT JOIN inbox_bodies b ON b.inbox_id = i.id ORDER BY i.id"
        ).fetchall()
        assert moved == [
            ("msg_1", {"n": 1}),
            ("msg_2", {"n": 2}),
            ("msg_3", {"n": 3}),
            ("msg_4", None),
            ("msg_5", None),
        ]
        column = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'inbox' AND column_name = 'payload'"
        ).fetchone()
        assert column is None
    # Rolled back, the bodies left return to their rows.
    _roll_back(fresh_database, "0061_inbox_bodies")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        back = conn.execute("SELECT event_key, payload FROM inbox ORDER BY id").fetchall()
        assert back == [
            ("msg_1", {"n": 1}),
            ("msg_2", {"n": 2}),
            ("msg_3", {"n": 3}),
            ("msg_4", None),
            ("msg_5", None),
        ]


def test_the_adyen_due_migration_copies_each_unprocessed_notification_and_rolls_back(
    fresh_database: str,
) -> None:
    _migrate_before(fresh_database, "0222")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO inbox (source, event_key, event_type, received_at, processed_at,
                               outcome, next_attempt_at)
            VALUES ('adyen', 'new', 'CAPTURE', '2026-01-01Z', NULL, NULL, NULL),
                   ('adyen', 'offered', 'CAPTURE', '2026-01-02Z', NULL, NULL, '2026-01-03Z'),
                   ('adyen', 'missed', 'CAPTURE', '2026-01-04Z', NULL, 'unmatched',
                    '2026-01-05Z'),
                   ('adyen', 'done', 'CAPTURE', '2026-01-06Z', '2026-01-06Z', 'applied', NULL),
                   ('shop', 'msg', 'order.updated', '2026-01-07Z', '2026-01-07Z', 'applied',
                    NULL)
            """
        )
    applied = migrate(fresh_database)
    assert "0222_adyen_due" in applied
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        due = conn.execute(
            "SELECT i.event_key, d.received_at = i.received_at AS same_age,"
            " d.next_attempt_at::text, d.unmatched"
            " FROM adyen_due d JOIN inbox i ON i.id = d.inbox_id ORDER BY i.id"
        ).fetchall()
        assert due == [
            ("new", True, None, False),
            ("offered", True, "2026-01-03 00:00:00+00", False),
            ("missed", True, "2026-01-05 00:00:00+00", True),
        ]
        gone = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN"
            " ('inbox_unprocessed', 'inbox_unprocessed_due', 'one_order_per_payment')"
        ).fetchone()
        assert gone == (0,)
    _roll_back(fresh_database, "0222_adyen_due", "0221_implied_indexes")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        back = conn.execute(
            "SELECT event_key, next_attempt_at::text FROM inbox ORDER BY id"
        ).fetchall()
        assert back == [
            ("new", None),
            ("offered", "2026-01-03 00:00:00+00"),
            ("missed", "2026-01-05 00:00:00+00"),
            ("done", None),
            ("msg", None),
        ]
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname IN"
            " ('inbox_unprocessed', 'inbox_unprocessed_due', 'one_order_per_payment')"
            " ORDER BY 1"
        ).fetchall()
        assert indexes == [
            ("inbox_unprocessed",),
            ("inbox_unprocessed_due",),
            ("one_order_per_payment",),
        ]


def test_rolling_back_the_body_once_migration_puts_every_current_body_back(
    fresh_database: str,
) -> None:
    """0241 keeps an order's current shop body in its row alone; the release before reads
    every body from inbox_bodies, so the rollback writes those back first."""
    migrate(fresh_database)
    snapshot = '{"id": "o1", "version": 2, "lines": []}'
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            """
            WITH stored AS (
                INSERT INTO inbox (source, event_key, event_type, order_id, processed_at,
                                   outcome)
                VALUES ('shop', 'm2', 'order.updated', 'o1', now(), 'applied') RETURNING id
            )
            INSERT INTO orders (id, version, provider, psp_order_id, currency, status,
                                snapshot, desired_amount, snapshot_inbox_id)
            SELECT 'o1', 2, 'klarna', 'k1', 'EUR', 'open', %s::jsonb, 0, id FROM stored
            """,
            (snapshot,),
        )
    _roll_back(fresh_database, "0241_shop_body_once")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        bodies = conn.execute(
            "SELECT i.event_key, b.payload = jsonb_build_object('type', 'order.updated',"
            " 'order', %s::jsonb) FROM inbox_bodies b JOIN inbox i ON i.id = b.inbox_id",
            (snapshot,),
        ).fetchall()
        assert bodies == [("m2", True)]
        column = conn.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'orders' AND column_name = 'snapshot_inbox_id'"
        ).fetchone()
        assert column == (0,)

"""Every statement read into a row class by position (data/orders.py
`_positional_row`) selects exactly that class's fields, in order."""

from __future__ import annotations

import uuid
from dataclasses import fields
from typing import Any

import psycopg
import pytest

from data import orders as store

Conn = psycopg.Connection[dict[str, Any]]


def _names(conn: Conn, sql: str, params: dict[str, Any]) -> list[str]:
    cursor = conn.execute(sql, params)
    assert cursor.description is not None
    return [column.name for column in cursor.description]


@pytest.mark.parametrize(
    ("cls", "sql", "params"),
    [
        (store.LockedOrder, store.LOCK_ORDER, {"id": "none"}),
        (store.Order, store.ORDER, {"id": "none"}),
        (store.Order, store.LOCK_ORDER_SKIP_LOCKED, {"id": "none"}),
        (store.Operation, store.OPERATIONS, {"id": "none"}),
        (store.Operation, store.OPERATION, {"id": uuid.uuid4(), "status": None}),
    ],
)
def test_a_statement_selects_its_row_class_fields_in_order(
    conn: Conn, cls: type[Any], sql: str, params: dict[str, Any]
) -> None:
    # All of them, or the stored ones without the computed ones after them (their
    # defaults stand).
    names = _names(conn, sql, params)
    assert names == [f.name for f in fields(cls)][: len(names)]
    assert len(names) >= len(store._columns(cls).split(", "))


def test_the_record_of_a_success_selects_its_row_class_fields_in_order(conn: Conn) -> None:
    params = {
        "known": None,
        "order_id": "none",
        "op_id": uuid.uuid4(),
        "token": uuid.uuid4(),
        "psp": None,
        "version": 1,
        "received": False,
    }
    names = _names(conn, store.RECORD_SUCCESS, params)
    assert names == [f.name for f in fields(store.RecordedOrder)]


def test_the_lock_with_operations_selects_its_row_class_fields_in_order(conn: Conn) -> None:
    names = _names(conn, store.LOCK_WITH_OPERATIONS, {"id": "none"})
    assert names == [f.name for f in fields(store._LockedWithOperations)]


def test_a_result_of_other_columns_is_refused(conn: Conn) -> None:
    cursor = conn.cursor(row_factory=store._OPERATION)
    with pytest.raises(TypeError, match="cannot be read"):
        cursor.execute("SELECT 1 AS id, 'x' AS kind").fetchone()

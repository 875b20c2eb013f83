"""`ordersync.db.pipelined`: one transaction per block, committed by the pipeline's
Sync, and nothing of a block that raised is ever committed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ordersync.db import SyncPool, pipelined, sync_pool


@pytest.fixture
def pool(database_url: str) -> Iterator[SyncPool]:
    pool = sync_pool(database_url, max_size=1)
    with pool.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pipelined_probe (x int)")
        conn.execute("TRUNCATE pipelined_probe")
    try:
        yield pool
    finally:
        with pool.connection() as conn:
            conn.execute("DROP TABLE pipelined_probe")
        pool.close()


def _count(pool: SyncPool) -> int:
    with pool.connection() as conn:
        row: Any = conn.execute("SELECT count(*) AS n FROM pipelined_probe").fetchone()
        return int(row["n"])


def test_a_block_is_one_transaction_committed_at_its_end(pool: SyncPool) -> None:
    with pipelined(pool) as conn:
        first: Any = conn.execute("SELECT txid_current() AS id, now() AS at").fetchone()
        conn.execute("INSERT INTO pipelined_probe VALUES (1)")
        second: Any = conn.execute("SELECT txid_current() AS id, now() AS at").fetchone()
    assert (first["id"], first["at"]) == (second["id"], second["at"])
    assert _count(pool) == 1
    with pool.connection() as conn:  # handed back as the pool gives it: not autocommit
        assert conn.autocommit is False


def test_a_block_that_raises_after_a_write_commits_nothing(pool: SyncPool) -> None:
    # A write already sent, and a read after it, when the block fails: the Sync that
    # ends a pipeline would commit them, so it must never be sent.
    with pytest.raises(RuntimeError, match="after the write"), pipelined(pool) as conn:
        conn.execute("INSERT INTO pipelined_probe VALUES (1)")
        conn.execute("SELECT 1").fetchone()
        raise RuntimeError("after the write")
    assert _count(pool) == 0
    with pipelined(pool) as conn:  # the pool still serves a working connection
        conn.execute("INSERT INTO pipelined_probe VALUES (2)")
    assert _count(pool) == 1


def test_a_statement_that_fails_rolls_back_the_block(pool: SyncPool) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero), pipelined(pool) as conn:
        conn.execute("INSERT INTO pipelined_probe VALUES (1)")
        conn.execute("SELECT 1 / 0").fetchone()
    assert _count(pool) == 0


def _holds_lock(pool: SyncPool, key: int) -> bool:
    # Another connection of the same pool: max_size=1 is taken by the block, so a
    # connection of its own.
    with psycopg.connect(pool.conninfo, autocommit=True) as other:
        row = other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
            (key,),
        ).fetchone()
        return bool(row and row[0])


def test_a_statement_leaves_for_the_server_with_the_next_read_or_the_commit(
    pool: SyncPool,
) -> None:
    # One write per round trip: an executed statement whose result is not read waits in
    # the client's buffer, and goes out with the statement read after it (or with the
    # Sync that commits): the server sees the block's statements in order, in one
    # transaction, as before.
    with pipelined(pool) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(4201)")
        assert not _holds_lock(pool, 4201)
        conn.execute("SELECT 1").fetchone()
        assert _holds_lock(pool, 4201)
        conn.execute("INSERT INTO pipelined_probe VALUES (1)")
        conn.execute("SELECT pg_advisory_xact_lock(4202)")
        assert not _holds_lock(pool, 4202)
    assert not _holds_lock(pool, 4202)  # the transaction ended with the block
    assert _count(pool) == 1


def test_a_block_that_raises_before_any_read_sends_nothing(pool: SyncPool) -> None:
    with pytest.raises(RuntimeError, match="before a read"), pipelined(pool) as conn:
        conn.execute("INSERT INTO pipelined_probe VALUES (1)")
        raise RuntimeError("before a read")
    assert _count(pool) == 0


def test_the_pipeline_methods_replaced_are_still_psycopg_s() -> None:
    # ordersync.db._OneWritePipeline replaces two methods of psycopg's pipeline and
    # relies on three more: an upgrade that renames them must fail here, not in a
    # worker.
    from psycopg._pipeline_base import BasePipeline

    for name in ("_communicate_gen", "_exit_gen", "_fetch_gen", "_enqueue_sync"):
        assert callable(getattr(BasePipeline, name, None)), name


def test_a_kept_cursor_serves_one_statement_on_one_connection(pool: SyncPool) -> None:
    from psycopg.rows import tuple_row

    from ordersync.db import kept_cursor

    query = "SELECT %(x)s::int AS x, now() AS at"
    with pipelined(pool) as conn:
        first = kept_cursor(conn, query, tuple_row)
        assert first.execute(query, {"x": 1}).fetchone() is not None
        again = kept_cursor(conn, query, tuple_row)
        assert again is first
        row = again.execute(query, {"x": 2}).fetchone()
        assert row is not None and row[0] == 2
        assert kept_cursor(conn, "SELECT 1", tuple_row) is not first
    other = sync_pool(pool.conninfo, max_size=1)
    try:
        with pipelined(other) as conn:
            assert kept_cursor(conn, query, tuple_row) is not first
    finally:
        other.close()

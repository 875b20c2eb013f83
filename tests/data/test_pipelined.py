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

"""Postgres: connection pools and migrations."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.abc import PQGen
from psycopg.generators import send
from psycopg.rows import BaseRowFactory, DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList

from ordersync.logging import get_logger

log = get_logger(__name__)

# Any constant shared by every process that migrates; pg_advisory_lock takes a bigint.
_MIGRATION_LOCK_ID = 0x6F726465_7273796E  # "ordersyn"
MIGRATION_LOCK_POLL_SECONDS = 0.2


SyncPool = ConnectionPool[psycopg.Connection[DictRow]]
AsyncPool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

_T = TypeVar("_T")
_KEPT = "_ordersync_kept_cursors"


def kept_cursor(
    conn: psycopg.Connection[Any], query: str, row_factory: BaseRowFactory[_T]
) -> psycopg.Cursor[_T]:
    """A cursor for `query` kept with the connection and used by each execution of
    that statement on it. psycopg keeps a cursor's adaptation state (a loader per
    column type, a dumper per parameter type) while it runs the same query object again;
    a new cursor builds it anew for every statement: on the worker's two wide reads (the
    lock and the record, 30-odd columns each) that was a tenth of its Python CPU per
    operation (`python -m bench.roundtrips --profile`).

    Only for a statement whose result is read right after its execute (`fetchone`,
    `fetchall`), or never: a second execution discards a result not read yet. A connection is
    used by one thread at a time (the pool hands it out), so is its cursor."""
    cursors: dict[str, Any] | None = getattr(conn, _KEPT, None)
    if cursors is None:
        cursors = {}
        setattr(conn, _KEPT, cursors)
    cursor: psycopg.Cursor[_T] | None = cursors.get(query)
    if cursor is None or cursor.closed:
        cursor = cursors[query] = conn.cursor(row_factory=row_factory)
    return cursor


def _has_news(conn: psycopg.Connection[DictRow] | psycopg.AsyncConnection[DictRow]) -> bool:
    """Whether an idle connection's socket has something to read. An idle connection
    has nothing to read unless the server spoke on its own, which is how it says it is
    going away (Postgres stopped or restarted: admin_shutdown, then EOF)."""
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def check_live(conn: psycopg.Connection[DictRow]) -> None:
    """The pools' check on checkout: only live connections are handed out. The round
    trip of psycopg_pool's own check is paid only when the socket has news, so a healthy
    pool costs a poll(), not a round trip per checkout; a connection the server closed
    (a Postgres restart) fails the check and the pool opens a new one. A peer that
    vanished without a word is not seen here: the statement fails and the task retries
    (workers/tasks.py)."""
    if _has_news(conn):
        ConnectionPool.check_connection(conn)


async def check_live_async(conn: psycopg.AsyncConnection[DictRow]) -> None:
    if _has_news(conn):
        await AsyncConnectionPool.check_connection(conn)


def sync_pool(database_url: str, *, min_size: int = 1, max_size: int = 4) -> SyncPool:
    return ConnectionPool(
        database_url,
        connection_class=psycopg.Connection[DictRow],
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        open=True,
        timeout=10,
        check=check_live,
        name="ordersync-sync",
    )


class _OneWritePipeline(psycopg.Pipeline):
    """psycopg's pipeline, writing to the socket only when an answer is waited for.

    psycopg writes every statement out as it is executed (a `send` per statement, and
    two polls), a Flush after the statement whose result is read, and a Flush after the
    pipeline's Sync, which asks for nothing the Sync did not: the worker's four trips
    per operation took ten writes, and each wakes the server's backend for a message.
    Here an executed statement goes into libpq's output buffer only (libpq writes in
    pipeline mode once 64 KiB are buffered, and when flushed); the buffer is written
    when a result is read (with the Flush that asks for it, psycopg's own `_fetch_gen`)
    and at the end (with the Sync): one write per round trip. What is sent, in what
    order, and in which transaction, is unchanged; only when the bytes leave.

    The two methods replaced are psycopg's (3.3, `_pipeline_base.py`);
    tests/data/test_pipelined.py holds when a statement leaves and what a block
    commits, and fails if psycopg's pipeline no longer has them."""

    def _communicate_gen(self) -> PQGen[None]:
        queue = self.command_queue
        while queue:
            queue.popleft()()  # into libpq's buffer: nothing written, nothing read
        return
        yield  # a generator, as the method it replaces

    def _exit_gen(self) -> PQGen[None]:
        try:
            self._enqueue_sync()
            yield from self._communicate_gen()
            yield from send(self.pgconn)  # what is buffered and the Sync, at once
        finally:
            # The Sync's answer ends the results: no Flush after it.
            yield from self._fetch_gen(flush=False)


@contextmanager
def _one_write_pipeline(conn: psycopg.Connection[DictRow]) -> Iterator[None]:
    """`conn.pipeline()` with `_OneWritePipeline` (psycopg's `Connection.pipeline`,
    whose class is fixed): never nested, as `pipelined` opens it on a pooled
    connection's start."""
    with conn.lock:
        conn._check_connection_ok()
        if conn._pipeline is not None:
            raise psycopg.ProgrammingError("pipelined() on a connection already pipelined")
        pipeline = conn._pipeline = _OneWritePipeline(conn)
    try:
        with pipeline:
            yield
    finally:
        with conn.lock:
            conn._pipeline = None


@contextmanager
def pipelined(pool: SyncPool) -> Iterator[psycopg.Connection[DictRow]]:
    """One transaction in pipeline mode. A statement is sent without waiting for its
    answer; reading a result waits for it and for every statement sent before it (one
    round trip); the writes after the last read go with the commit: a transaction
    costs one round trip per read waited for, plus one. Rolled back if the block
    raises. A result read after the block costs nothing more (it came back with the
    commit).

    The transaction is the protocol's own: without a BEGIN, every statement up to the
    pipeline's Sync runs in one transaction, committed by the Sync, rolled back by the
    server on any error before it (PostgreSQL's extended query protocol). No BEGIN and
    COMMIT statements (each a statement's worth of client CPU), and none of psycopg's
    own waits for them. A block that raises must never reach the Sync, which would
    commit what it sent: its connection is closed first, and the server rolls back.
    One write to the server per round trip (`_OneWritePipeline`)."""
    raised: BaseException | None = None
    with pool.connection() as conn:
        conn.autocommit = True
        try:
            with _one_write_pipeline(conn):
                try:
                    yield conn
                except BaseException as exc:
                    raised = exc
                    conn.close()
                    raise
        except BaseException:
            if raised is not None:
                # The pipeline's exit on the closed connection may raise its own error:
                # the block's is the one to report.
                raise raised from None
            # An error the server reported: it rolled the transaction back itself.
            raise
        finally:
            if (
                not conn.closed
                and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            ):
                conn.autocommit = False
            else:
                conn.close()  # never handed out again in autocommit mode


def async_pool(database_url: str, *, max_size: int = 20, name: str = "ordersync-web") -> AsyncPool:
    # Opened by the app's lifespan, not here: opening needs a running event loop.
    return AsyncConnectionPool(
        database_url,
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=1,
        max_size=max_size,
        # Autocommit: a single statement costs one round trip; writes that need more
        # than one statement open `conn.transaction()` explicitly.
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        timeout=5,
        check=check_live_async,
        name=name,
    )


def _yoyo_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    scheme = "postgresql+psycopg" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    return urlunsplit((scheme, *parts[1:]))


def _wait_for_lock(conn: psycopg.Connection[Any]) -> None:
    """Takes the migration lock by polling, never by one long blocking call: a session
    sitting in `pg_advisory_lock` is a transaction in progress, which CREATE INDEX
    CONCURRENTLY (run by the pod holding the lock) must wait out, and that wait ends in
    LockNotAvailable at the migration's lock_timeout. Each try is a statement of a
    moment, so the other pod's build never waits on this one."""
    waited = False
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK_ID,)).fetchone()
        if row is not None and row[0]:
            return
        if not waited:
            log.info("migrations_waiting", reason="another process is migrating")
            waited = True
        time.sleep(MIGRATION_LOCK_POLL_SECONDS)


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied.

    yoyo's own lock is a table row that outlives a killed process, so the run is also
    serialised with a session advisory lock, which Postgres drops with the connection:
    two pods starting at once wait for each other, and a crashed pod leaves no lock.
    """
    directory = str(resources.files("migrations"))
    with psycopg.connect(database_url, autocommit=True) as lock_conn:
        _wait_for_lock(lock_conn)
        try:
            backend = get_backend(_yoyo_url(database_url))
            try:
                # The folder is a package so the SQL ships with the code; its
                # __init__.py is not a migration.
                migrations = MigrationList(
                    m for m in read_migrations(directory) if not m.id.startswith("__")
                )
                with backend.lock():
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
                applied = [m.id for m in pending]
            finally:
                backend.connection.close()
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_ID,))
    log.info("migrations_applied", applied=applied, count=len(applied))
    return applied

"""Repository tests: the real schema on a real Postgres, one transaction per test that is
rolled back at the end, so tests see each other's rows never and run in any order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from devrig.devstack import migrated_postgres
from psycopg.rows import dict_row


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with migrated_postgres("ordersync-repo-pg-") as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        # Not autocommit: everything the test does, the repositories' own savepoints
        # included, lives in the one transaction psycopg opens on the first statement.
        try:
            yield connection
        finally:
            connection.rollback()

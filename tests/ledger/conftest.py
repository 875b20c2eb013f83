"""Repository-level reconciler tests: the real reconciler and SQL on a real Postgres,
with the PSP played in-process through an injected httpx transport (no worker)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from devrig.devstack import EmbeddedPostgres, temporary_pg_dir

from ordersync.db import migrate


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        migrate(url)
        yield url
        return
    pg_dir = temporary_pg_dir("ordersync-ledger-pg-")
    postgres = EmbeddedPostgres(pg_dir / "data")
    try:
        migrate(postgres.url)
        yield postgres.url
    finally:
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)

"""Repository-level reconciler tests: the real reconciler and SQL on a real Postgres,
with the PSP played in-process through an injected httpx transport (no worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devrig.devstack import migrated_postgres


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with migrated_postgres("ordersync-ledger-pg-") as url:
        yield url

"""Repository-level reconciler tests: the real reconciler and SQL on a real Postgres,
with the PSP played in-process through an injected httpx transport (no worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devrig.devstack import migrated_postgres

from tests.ledger.harness import FakeKlarna, context
from workers.context import WorkerContext


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with migrated_postgres("ordersync-ledger-pg-") as url:
        yield url


@pytest.fixture
def klarna() -> FakeKlarna:
    return FakeKlarna()


@pytest.fixture
def ctx(database_url: str, klarna: FakeKlarna) -> Iterator[WorkerContext]:
    """A worker's context over a fake Klarna (a module may define its own)."""
    context_ = context(database_url, klarna)
    yield context_
    context_.close()

"""The deterministic simulation (devrig/devrig/simulation.py), bounded: fixed seeds against
a real Postgres of its own, the real ingest, task layer, reconciler, Adyen inbox, sweeper
and callback delivery, a PSP model over HTTP, judged by the oracle (devrig/devrig/oracle.py).

The long run is `ordersync simulate --histories N --first-seed S [--processes P]`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devrig.devstack import EmbeddedPostgres, temporary_pg_dir

from devrig import simulation
from ordersync.db import migrate

# Small enough for the suite's minute on two shared cores; the long runs are commands.
HISTORIES = 40


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    postgres = EmbeddedPostgres(temporary_pg_dir("ordersync-sim-test-pg-") / "data")
    try:
        with simulation.quiet_logs():
            migrate(postgres.url)
        simulation.prepare(postgres.url)
        yield postgres.url
    finally:
        postgres.stop()


@pytest.mark.timeout(600)
@pytest.mark.xfail(
    reason="open findings the oracle is right about (/work/notes/i19-findings.md); "
    "remove this mark once branch i19fix has fixed them",
    strict=False,
)
def test_bounded_simulation_finds_no_violation(database_url: str) -> None:
    summary = simulation.run_many(database_url, HISTORIES, first_seed=1)
    assert summary.histories == HISTORIES
    assert summary.faults > HISTORIES  # the histories are not fault-free by accident
    # Workers really die, also inside recording, and the sweeper picks up after them.
    assert any(kind.startswith("fault death_") for kind in summary.kinds)
    violations = [
        (result.seed, violation) for result in summary.failures for violation in result.violations
    ]
    print(f"{summary.rate:.1f} histories/s")
    assert violations == []


def test_one_seed_replays_one_history_exactly(database_url: str) -> None:
    sim = simulation.Simulation(database_url)
    try:
        with simulation.quiet_logs():
            first = [sim.run(seed).digest for seed in range(900, 905)]
            again = [sim.run(seed).digest for seed in range(900, 905)]
    finally:
        sim.close()
    assert first == again
    assert len(set(first)) == len(first)

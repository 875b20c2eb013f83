"""The deterministic simulation (ordersync/simulation.py), bounded: fixed seeds against
a real Postgres of its own, the real reconciler and clients, a PSP model over HTTP.

The long run is `ordersync simulate --histories N --first-seed S`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ordersync import simulation
from ordersync.db import migrate
from ordersync.devstack import EmbeddedPostgres, temporary_pg_dir

HISTORIES = 200

# Sequences of issue 11 the reconciler-safety half (branch i11a) removes; until it is
# merged the simulation finds them on this code. Remove an entry once it is fixed: the
# bounded run then fails on any history that shows it again.
KNOWN_ON_BASE = {
    1: "unknown outcome finished `failed` after exhausted retries (i11a)",
    2: "Adyen resend settled by an early notification is marked stale (i11a)",
    3: "a failed check-read became the operation's outcome (i11a)",
    4: "a slow read overwrote newer figures (i11a)",
    9: "an exception inside an attempt (malformed Retry-After) killed the task (i11a)",
    10: "a 409 'in progress' taken as a business rejection (i11a)",
    11: "a retry under one key rebuilt the request (shipping_info) (i11a)",
    13: "a second, different refused increase not told to the shop (i11a)",
    14: "Adyen authorized amount taken from the first snapshot stored (i11a)",
}


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


def test_bounded_simulation_finds_nothing_beyond_the_known_sequences(database_url: str) -> None:
    summary = simulation.run_many(database_url, HISTORIES, first_seed=1)
    assert summary.histories == HISTORIES
    assert summary.faults > HISTORIES  # the histories are not fault-free by accident
    unexpected = [
        (result.seed, violation)
        for result in summary.failures
        for violation in result.violations
        if violation.sequence not in KNOWN_ON_BASE
    ]
    known = sorted(
        {v.sequence for r in summary.failures for v in r.violations} & KNOWN_ON_BASE.keys()
    )
    print(f"known sequences seen: {known}; {summary.rate:.1f} histories/s")
    assert unexpected == []


def test_one_seed_replays_one_history_exactly(database_url: str) -> None:
    sim = simulation.Simulation(database_url)
    try:
        with simulation.quiet_logs():
            first = [sim.run(seed).digest for seed in range(900, 910)]
            again = [sim.run(seed).digest for seed in range(900, 910)]
    finally:
        sim.close()
    assert first == again
    assert len(set(first)) == len(first)

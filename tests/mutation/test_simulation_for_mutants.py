"""The simulation as a mutation run's test (`python -m devrig.mutation`, docs/mutation.md):
a few small chunks of seeds, each stopping at its first violation, so that a mutant the
simulation catches costs a few histories, not hundreds.

Skipped outside a mutation run: the suite's own form is tests/integration/test_simulation.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from devrig.devstack import migrated_postgres

from devrig import simulation

HISTORIES = int(os.environ.get("MUTATION_SIM_HISTORIES", "40"))
CHUNK = 10

pytestmark = pytest.mark.skipif(
    "MUTANT_UNDER_TEST" not in os.environ, reason="runs under mutmut only (docs/mutation.md)"
)


@pytest.fixture(scope="module")
def sim() -> Iterator[simulation.Simulation]:
    with migrated_postgres("ordersync-mutation-pg-") as url:
        simulation.prepare(url)
        sim = simulation.Simulation(url)
        try:
            yield sim
        finally:
            sim.close()


@pytest.mark.parametrize("first", range(1, 1 + HISTORIES, CHUNK))
def test_simulated_histories_keep_the_invariants(sim: simulation.Simulation, first: int) -> None:
    for seed in range(first, first + CHUNK):
        with simulation.quiet_logs():
            result = sim.run(seed)
        assert result.violations == [], f"seed {seed}: {result.violations[0]}"

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

# The seeds whose histories pass on the unmutated code (python -m devrig.mutation finds
# them before mutmut starts): a mutant is judged only by what it changes.
SEEDS = [int(s) for s in os.environ.get("MUTATION_SIM_SEEDS", "").split(",") if s] or list(
    range(1, 41)
)
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


@pytest.mark.parametrize("chunk", range(0, len(SEEDS), CHUNK))
def test_simulated_histories_keep_the_invariants(sim: simulation.Simulation, chunk: int) -> None:
    for seed in SEEDS[chunk : chunk + CHUNK]:
        with simulation.quiet_logs():
            result = sim.run(seed)
        assert result.violations == [], f"seed {seed}: {result.violations[0]}"

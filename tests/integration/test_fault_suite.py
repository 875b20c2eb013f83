"""The fault suite's command works and finds nothing wrong on one small seed.

The long runs (more seeds, orders and events) are `ordersync faults`; see docs/faults.md.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_one_small_seed_of_the_fault_suite_passes() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "faults",
            "--seeds",
            "1",
            "--first-seed",
            "42",
            "--orders",
            "5",
            "--events",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "VIOLATION" not in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "faults: 1 passed, 0 failed", (
        result.stdout + result.stderr[-3000:]
    )
    assert result.returncode == 0

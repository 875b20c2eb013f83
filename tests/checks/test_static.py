"""The static checks the README's test command runs before anything else: formatting,
lint, strict types and the import layers. Each is the tool's own command, so a developer
runs the same thing by hand (`ruff format --check .`, `ruff check .`, `mypy`,
`lint-imports`) and sees the same answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

CHECKS = {
    "ruff_format": [str(BIN / "ruff"), "format", "--check", "."],
    "ruff_lint": [str(BIN / "ruff"), "check", "."],
    "mypy_strict": [str(BIN / "mypy")],
    "import_layers": [str(BIN / "lint-imports")],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", CHECKS)
def test_static_check_passes(name: str) -> None:
    result = subprocess.run(
        CHECKS[name], cwd=REPO, capture_output=True, text=True, timeout=280, check=False
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-6000:]}{result.stderr[-3000:]}"

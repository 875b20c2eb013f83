"""The runtime wheel, built as the image builds it (no extras): the service's layers and
migrations, and nothing of the development rig."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = {"cli", "service", "workers", "data", "integrations", "ordersync", "domain", "migrations"}
# Words that name development-only code: none may appear in a runtime file's path.
RIG = ("devrig", "sandbox", "faultsuite", "faultproxy", "devstack", "demo", "simulation", "bench")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=240,
    )
    (wheel,) = out.glob("ordersync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.timeout(300)
def test_runtime_wheel_holds_the_layers_and_no_development_rig(wheel_files: list[str]) -> None:
    top = {name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith("-info")}
    assert top == RUNTIME
    leaked = [name for name in wheel_files if any(word in name.lower() for word in RIG)]
    assert leaked == []
    assert "migrations/0001_initial.sql" in wheel_files
    assert "service/openapi.json" in wheel_files
    # The console: its templates and stylesheet ship in the wheel (no CDN).
    for page in ("base", "login", "orders", "order", "confirm", "health", "error"):
        assert f"service/console/templates/{page}.html" in wheel_files
    assert "service/console/static/console.css" in wheel_files

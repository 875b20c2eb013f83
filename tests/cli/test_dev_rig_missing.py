"""The runtime image has no development rig: its commands say how to get it."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from cli.main import main


@pytest.mark.parametrize(
    "argv",
    [["dev"], ["sandbox"], ["faults"], ["demo", "--secret", "whsec_x"]],
    ids=["dev", "sandbox", "faults", "demo"],
)
def test_a_dev_rig_command_without_the_rig_exits_2_saying_how_to_install_it(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def without_rig(name: str, *args: Any) -> Any:
        return None if name == "devrig" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_rig)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install -e ./devrig" in err
    assert err.count("\n") == 1

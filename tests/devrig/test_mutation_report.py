"""The mutation command's report (devrig/mutation.py): the figures it prints are mutmut's
results less the survivors docs/mutation.md explains as equivalent. The long form is
`python -m devrig.mutation` (docs/mutation.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from devrig import mutation

ROOT = Path(__file__).resolve().parents[2]


def _meta(root: Path, path: str, codes: dict[str, int]) -> None:
    meta = root / "mutants" / f"{path}.meta"
    meta.parent.mkdir(parents=True, exist_ok=True)
    durations = {name: 0.5 for name in codes}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": durations}))


def test_kill_rate_leaves_out_the_equivalent_and_counts_timeouts_as_killed(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mutmut]\nonly_mutate = ["domain/lines.py"]\n', encoding="utf-8"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "mutation.md").write_text(
        "| mutant | verdict | why |\n|---|---|---|\n"
        "| `domain.lines.x_f__mutmut_3` | equivalent | same value |\n"
        "| `domain.lines.x_f__mutmut_4` | killed by tests/x.py | a test |\n"
        "| `domain.lines.x_g__mutmut_1`, `_2` | equivalent | both the same value |\n",
        encoding="utf-8",
    )
    _meta(
        tmp_path,
        "domain/lines.py",
        {
            "domain.lines.x_f__mutmut_1": 1,  # killed
            "domain.lines.x_f__mutmut_2": 36,  # timeout: killed
            "domain.lines.x_f__mutmut_3": 0,  # survived, explained as equivalent
            "domain.lines.x_f__mutmut_4": 0,  # survived: a real gap still
            "domain.lines.x_f__mutmut_5": 33,  # no test reaches it
        },
    )
    report = mutation.read_report(tmp_path)
    assert report.equivalent == {"domain.lines.x_f__mutmut_3"}
    assert {"domain.lines.x_g__mutmut_1", "domain.lines.x_g__mutmut_2"} <= mutation.explained(
        tmp_path / "docs" / "mutation.md"
    )
    assert report.survivors() == ["domain.lines.x_f__mutmut_4", "domain.lines.x_f__mutmut_5"]
    lines = list(report.lines())
    assert re.split(r"\s+", lines[1]) == ["domain/lines.py", "5", "5", "2", "1", "2", "50.0%"]
    assert lines[-1] == "test time 2 s over 5 mutants checked (0.50 s each)"
    # Every survivor is listed with its verdict, the equivalent one included.
    assert report.checked_survivors() == [
        ("domain.lines.x_f__mutmut_3", "survived", "equivalent"),
        ("domain.lines.x_f__mutmut_4", "survived", "killed by tests/x.py"),
        ("domain.lines.x_f__mutmut_5", "no tests", ""),
    ]


def test_the_explained_survivors_name_mutants_of_the_mutated_files() -> None:
    modules = {path.removesuffix(".py").replace("/", ".") for path in mutation.mutated_files(ROOT)}
    assert modules == {"domain.planner", "domain.lines", "workers.reconcile", "workers.adyen_inbox"}
    for name in mutation.explained(ROOT / mutation.EXPLAINED):
        assert name.rsplit(".", 1)[0] in modules, name


MUTANTS = '''\
def x_f__mutmut_orig(a):
    """The original: one more."""
    b = 1  # why
    return a + b


def x_f__mutmut_1(a):
    b = 1
    return a - b


def x_f__mutmut_2(a):
    b = 2
    return a + b
'''


def _keyed_tree(root: Path, mutants: str, rows: str) -> mutation.Report:
    (root / "pyproject.toml").write_text(
        '[tool.mutmut]\nonly_mutate = ["domain/lines.py"]\n', encoding="utf-8"
    )
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "mutation.md").write_text(
        "| mutant | verdict | why |\n|---|---|---|\n" + rows, encoding="utf-8"
    )
    survived = {"domain.lines.x_f__mutmut_1": 0, "domain.lines.x_f__mutmut_2": 0}
    _meta(root, "domain/lines.py", survived)
    (root / "mutants" / "domain" / "lines.py").write_text(mutants, encoding="utf-8")
    return mutation.read_report(root)


def test_a_verdict_follows_its_mutant_by_key_and_goes_stale_when_the_function_changes(
    tmp_path: Path,
) -> None:
    first = _keyed_tree(tmp_path, MUTANTS, "")
    key = first.keys["domain.lines.x_f__mutmut_1"]
    assert key is not None and re.fullmatch(r"[0-9a-f]{8}/[0-9a-f]{8}", key)
    assert first.keys["domain.lines.x_f__mutmut_2"] != key
    # Judged when mutmut called it _7: the key finds it under its number now. A row
    # without a key is another mutant's for all the report can tell: it counts for nothing.
    rows = (
        f"| `domain.lines.x_f__mutmut_7` `{key}` | equivalent | a − 1 is a + 1 here |\n"
        "| `domain.lines.x_f__mutmut_2` | equivalent | judged before keys |\n"
    )
    report = _keyed_tree(tmp_path, MUTANTS, rows)
    assert report.equivalent == {"domain.lines.x_f__mutmut_1"}
    assert report.checked_survivors()[1][2].startswith("unkeyed row, by name only")
    # A comment, a docstring or the layout is no change of the function ...
    relaid = MUTANTS.replace('    """The original: one more."""\n', "").replace("  # why", "")
    assert _keyed_tree(tmp_path, relaid, rows).equivalent == {"domain.lines.x_f__mutmut_1"}
    # ... its code is: the verdict is stale until judged again on the new code.
    changed = MUTANTS.replace("b = 1", "b = 3")
    stale = _keyed_tree(tmp_path, changed, rows)
    assert stale.equivalent == set()
    assert stale.checked_survivors()[0][2] == (
        "stale (judged on another version of the function): equivalent"
    )

"""Mutation testing of the money paths: `python -m devrig.mutation` (docs/mutation.md).

Runs mutmut (configured in pyproject.toml's `[tool.mutmut]`) over the planner, the line
arithmetic, the reconciler and the Adyen notification processing, with the fast domain
tests, the ledger tests and a small form of the simulation as the test command, against
one embedded Postgres of its own (each forked test process works on its own copy of the
migrated database). Then prints the kill rate per file and every survivor with the
verdict docs/mutation.md gives it (equivalent, or the test that kills it now); the diff
of each one not explained as equivalent.

    python -m devrig.mutation                  # the whole run (resumes a previous one)
    python -m devrig.mutation --fresh 'domain.lines.*'
    python -m devrig.mutation --report         # only the figures of the last run

The kill rate is killed / (mutants - equivalent); a timeout counts as killed (the mutant
made the tests hang), a mutant no selected test reaches counts as survived.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from devrig.devstack import EmbeddedPostgres, database_named, temporary_pg_dir

EXPLAINED = Path("docs/mutation.md")
# A row of docs/mutation.md's survivors tables: | `mutant`, `_N` `key` | verdict | why |
# (`_N`: another mutant of the same function; `key`: the mutant's `mutant_key`, as the
# report prints it; rows written before keys have none).
_VERDICT = re.compile(
    r"^\|\s*(?P<names>`[\w.]+__mutmut_\d+`(?:,\s*`_\d+`)*)"
    r"(?:\s*`(?P<key>[0-9a-f]{8}/[0-9a-f]{8})`)?\s*\|\s*(?P<verdict>[^|]+?)\s*\|"
)
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


@dataclass(frozen=True)
class Row:
    """One verdict of docs/mutation.md: the mutants it names, the key of the mutant it
    was judged on (None in a row written before keys), the verdict's text."""

    names: tuple[str, ...]
    key: str | None
    verdict: str


class Sources:
    """The functions mutmut wrote under mutants/ (each function's unmutated copy and its
    mutants), each file parsed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]] = {}

    def _functions(self, module: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        if module not in self._modules:
            path = self.root / "mutants" / (module.replace(".", "/") + ".py")
            found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
            if path.exists():
                tree = ast.parse(path.read_text(encoding="utf-8"))
                for node in tree.body:
                    inner = node.body if isinstance(node, ast.ClassDef) else [node]
                    for function in inner:
                        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                            found[function.name] = function
            self._modules[module] = found
        return self._modules[module]

    def key(self, name: str) -> str | None:
        """`what/version`: a digest of the function and the lines the mutant changes in
        it (the same for the same mutation whatever number mutmut gives it), and one of
        the unmutated function (it changes when the function's code does: a verdict
        judged on another version is stale). Comments, docstrings and layout are left
        out of both. None when mutants/ does not hold the mutant's source."""
        module, _, generated = name.rpartition(".")
        function = generated.rpartition("__mutmut_")[0]
        functions = self._functions(module)
        original, mutant = functions.get(function + "__mutmut_orig"), functions.get(generated)
        if original is None or mutant is None:
            return None
        before, after = _code(original), _code(mutant)
        changed = [
            line.strip()
            for line in difflib.unified_diff(before, after, n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        return f"{_digest([module, function, *changed])}/{_digest(before)}"


def _code(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or [ast.Pass()]
    anonymous = copy.copy(function)
    anonymous.name, anonymous.body = "f", body
    return ast.unparse(anonymous).splitlines()


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:8]


@dataclass
class FileFigures:
    path: str
    statuses: dict[str, str] = field(default_factory=dict)  # mutant -> mutmut's status
    seconds: float = 0.0

    def count(self, wanted: Callable[[str, str], bool]) -> int:
        return sum(1 for name, status in self.statuses.items() if wanted(name, status))


@dataclass
class Report:
    files: list[FileFigures]
    rows: list[Row] = field(default_factory=list)  # docs/mutation.md's verdicts
    keys: dict[str, str | None] = field(default_factory=dict)  # survivor -> Sources.key

    def verdict(self, name: str) -> tuple[str, bool]:
        """The verdict docs/mutation.md gives a survivor ("" if none) and whether it
        counts as equivalent. A row is found by the survivor's key, whatever number
        mutmut gave the mutant when it was judged; judged on another version of the
        function, it is stale and counts for nothing. A row without a key is found by
        the name alone, which another mutant may carry since: it counts only when the
        survivor's key cannot be read either."""
        key = self.keys.get(name)
        if key is not None:
            what = key.split("/")[0]
            same = [row for row in self.rows if row.key and row.key.split("/")[0] == what]
            if same:
                row = same[-1]
                if row.key == key:
                    return row.verdict, row.verdict.lower() == "equivalent"
                return f"stale (judged on another version of the function): {row.verdict}", False
        named = [row for row in self.rows if name in row.names]
        if not named or named[-1].key is not None:
            return "", False  # none, or a keyed row that was judged on another mutation
        verdict = named[-1].verdict
        if key is None:
            return verdict, verdict.lower() == "equivalent"
        return f"unkeyed row, by name only (another mutant may carry it now): {verdict}", False

    @property
    def equivalent(self) -> set[str]:
        """The checked survivors docs/mutation.md calls equivalent (left out of the rate)."""
        return {
            name
            for figures in self.files
            for name, status in figures.statuses.items()
            if status not in KILLED and status != "not checked" and self.verdict(name)[1]
        }

    def survivors(self) -> list[str]:
        equivalent = self.equivalent
        return sorted(
            name
            for figures in self.files
            for name, status in figures.statuses.items()
            if status not in KILLED and name not in equivalent
        )

    def checked_survivors(self) -> list[tuple[str, str, str]]:
        """Every checked mutant no test killed, equivalent ones included: its name,
        mutmut's status and the verdict docs/mutation.md gives it ("" if none yet)."""
        return sorted(
            (name, status, self.verdict(name)[0])
            for figures in self.files
            for name, status in figures.statuses.items()
            if status not in KILLED and status != "not checked"
        )

    def lines(self) -> Iterable[str]:
        """Per file: mutants made, checked, killed, equivalent, survived, kill rate
        (over the checked ones: a partial or sampled run reports what it checked)."""
        sums = [0, 0, 0, 0]
        yield (
            f"{'file':<26} {'mutants':>7} {'checked':>7} {'killed':>6} {'equiv':>5} "
            f"{'survived':>8} {'rate':>6}"
        )
        equivalent = self.equivalent
        for figures in self.files:
            n = len(figures.statuses)
            c = figures.count(lambda _n, s: s != "not checked")
            k = figures.count(lambda _n, s: s in KILLED)
            e = figures.count(lambda name, _s: name in equivalent)
            sums = [a + b for a, b in zip(sums, (n, c, k, e), strict=True)]
            yield _row(figures.path, n, c, k, e)
        yield _row("all", *sums)
        seconds = sum(figures.seconds for figures in self.files)
        if sums[1]:
            yield (
                f"test time {seconds:.0f} s over {sums[1]} mutants checked "
                f"({seconds / sums[1]:.2f} s each)"
            )


def _row(label: str, made: int, checked: int, killed: int, equivalent: int) -> str:
    survived = checked - killed - equivalent
    return (
        f"{label:<26} {made:>7} {checked:>7} {killed:>6} {equivalent:>5} {survived:>8} "
        f"{_rate(killed, checked - equivalent):>6}"
    )


def _rate(killed: int, relevant: int) -> str:
    return f"{100 * killed / relevant:.1f}%" if relevant else "-"


def rows(doc: Path) -> list[Row]:
    """docs/mutation.md's verdicts, in the page's order (a later row wins)."""
    if not doc.exists():
        return []
    found = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        match = _VERDICT.match(line)
        if match:
            first, *others = re.findall(r"`([^`]+)`", match["names"])
            function = first.rpartition("__mutmut_")[0]
            names = (first, *(f"{function}__mutmut{other}" for other in others))
            found.append(Row(names, match["key"], match["verdict"].strip()))
    return found


def explained(doc: Path) -> set[str]:
    """The mutants docs/mutation.md calls equivalent, by name."""
    return {name for row in rows(doc) if row.verdict.lower() == "equivalent" for name in row.names}


def mutated_files(root: Path) -> list[str]:
    """The files mutmut mutates: `only_mutate` of pyproject.toml's [tool.mutmut]."""
    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["mutmut"]["only_mutate"])


def read_report(root: Path) -> Report:
    from mutmut.stats import status_by_exit_code

    figures = []
    for path in mutated_files(root):
        one = FileFigures(path)
        meta = root / "mutants" / f"{path}.meta"
        if meta.exists():
            data = json.loads(meta.read_text(encoding="utf-8"))
            for name, code in data["exit_code_by_key"].items():
                one.statuses[name] = status_by_exit_code[code]
            one.seconds = sum(data.get("durations_by_key", {}).values())
        figures.append(one)
    sources = Sources(root)
    keys = {
        name: sources.key(name)
        for one in figures
        for name, status in one.statuses.items()
        if status not in KILLED and status != "not checked"
    }
    return Report(figures, rows(root / EXPLAINED), keys)


def _start_postgres() -> tuple[EmbeddedPostgres, str]:
    """One server for the whole run; its migrated database is the template each forked
    test process copies (TEST_DATABASE_PER_PROCESS, devrig/devstack.py)."""
    import psycopg

    from devrig.simulation import throwaway_server
    from ordersync.db import migrate

    postgres = EmbeddedPostgres(temporary_pg_dir("ordersync-mutation-pg-") / "data")
    admin = postgres.url
    # A server made for this run alone, dropped at its end: no commit, database copy or
    # drop of a test process waits for the disk (what the tests check is unchanged).
    throwaway_server(admin)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE ordersync_mutation")
    url = database_named(admin, "ordersync_mutation")
    migrate(url)
    return postgres, url


def generate() -> None:
    """Makes mutmut's mutants (its `run` does this first) without running any test: a
    sample is picked from them before the run."""
    from mutmut.__main__ import create_mutants, store_lines_covered_by_tests
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    store_lines_covered_by_tests()
    create_mutants(2)


def sample(root: Path, every: int, offset: int = 0) -> list[str]:
    """Every `every`-th mutant of each file (by mutmut's order), starting at the
    `offset`-th, not yet checked: a fixed, spread-out sample when the machine cannot
    afford the whole run. Another offset draws a sample disjoint from the first."""
    report = read_report(root)
    if not any(figures.statuses for figures in report.files):
        generate()
        report = read_report(root)
    names = []
    for figures in report.files:
        for index, (name, status) in enumerate(sorted(figures.statuses.items(), key=_order)):
            if index % every == offset % every and status == "not checked":
                names.append(name)
    return names


def _order(item: tuple[str, str]) -> tuple[str, int]:
    function, _, number = item[0].rpartition("__mutmut_")
    return function, int(number)


def passing_seeds(url: str, histories: int) -> list[int]:
    """The simulation's seeds 1..histories whose histories pass on the unmutated code,
    on a copy of the migrated database: the mutation run judges mutants by these only
    (a violation the product has anyway says nothing about a mutant)."""
    from devrig import simulation
    from devrig.devstack import cloned_database

    passing = []
    with cloned_database(url) as clone:
        simulation.prepare(clone)
        sim = simulation.Simulation(clone)
        try:
            for seed in range(1, histories + 1):
                with simulation.quiet_logs():
                    if not sim.run(seed).violations:
                        passing.append(seed)
        finally:
            sim.close()
    print(f"simulation: {len(passing)} of {histories} seeds pass on the unmutated code")
    return passing


def run(names: list[str], *, max_children: int, histories: int) -> int:
    postgres, url = _start_postgres()
    try:
        seeds = passing_seeds(url, histories)
    except BaseException:
        postgres.stop()
        raise
    env = {
        **os.environ,
        "TEST_DATABASE_URL": url,
        "TEST_DATABASE_PER_PROCESS": "1",
        "MUTATION_SIM_SEEDS": ",".join(map(str, seeds)),
    }
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    started = time.monotonic()
    try:
        code = subprocess.call([*command, *names], env=env)
    finally:
        postgres.stop()
    print(f"mutmut ran {time.monotonic() - started:.0f} s (exit {code})")
    return code


def show(name: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    return str(get_diff_for_mutant(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devrig.mutation", description=__doc__)
    parser.add_argument("names", nargs="*", help="mutant names or globs (default: all)")
    parser.add_argument("--report", action="store_true", help="only print the last run's figures")
    parser.add_argument("--fresh", action="store_true", help="forget the previous run's results")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--histories", type=int, default=40, help="simulated histories per mutant (at most)"
    )
    parser.add_argument("--no-diffs", action="store_true", help="list survivors without diffs")
    parser.add_argument(
        "--sample", type=int, metavar="N", help="check only every N-th mutant of each file"
    )
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        metavar="K",
        help="with --sample: start at each file's K-th mutant (another sample of the same N)",
    )
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / "pyproject.toml").exists():
        parser.error("run it from the repository's root (where [tool.mutmut] is)")
    if not args.report:
        # Heavy and long: never in the way of anything interactive on the machine.
        os.nice(10)
        if args.fresh:
            # Before the sample is picked: a fresh sample is drawn from fresh mutants.
            shutil.rmtree("mutants", ignore_errors=True)
        names = sample(root, args.sample, args.offset) if args.sample else args.names
        if args.sample and not names:
            print("every mutant of the sample is checked already")
        else:
            run(names, max_children=args.max_children, histories=args.histories)
    report = read_report(root)
    for line in report.lines():
        print(line)
    survivors = report.checked_survivors()
    unexplained = [name for name, _, _ in survivors if name not in report.equivalent]
    unchecked = sum(
        1 for figures in report.files for s in figures.statuses.values() if s == "not checked"
    )
    print(
        f"survivors: {len(survivors)}, of which {len(survivors) - len(unexplained)} "
        f"equivalent by {EXPLAINED} (left out of the rate)"
    )
    if unchecked:
        print(f"not checked yet (an interrupted or partial run): {unchecked}")
    for name, status, verdict in survivors:
        # A "killed by" verdict names a test written after this run: mutmut counts the
        # mutant killed once it is run again by name. The key is what a new row gives.
        key = report.keys.get(name) or "no key"
        print(f"  {name}  `{key}`  ({status}): {verdict or 'no verdict yet'}")
        if not args.no_diffs and name not in report.equivalent:
            print("    " + show(name).strip().replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A history that raises is one violation, not the end of the run
(devrig/devrig/simulation.py `run_seeds`, `stopped`): the oracle or the harness raising
while judging is `judge_error`, the product raising outside a task `product_crash`; both
with the exception and where, and the run goes on with the next seed."""

from __future__ import annotations

from devrig.simulation import Result, Summary, report, run_seeds


class _RaisingOracle:
    """An oracle that cannot judge one seed's history (as `min()` of nothing once did)."""

    def __init__(self, bad_seed: int) -> None:
        self.bad_seed = bad_seed

    def expectation(self, seed: int) -> None:
        lows: list[int] = []  # no open snapshot in the window
        if seed == self.bad_seed:
            min(0, *lows)


class _Sim:
    """Stands for `Simulation`: each history notes a line, then asks `judge(seed)`."""

    def __init__(self, judge: object) -> None:
        self.judge = judge
        self.result = Result(-1)
        self._events = 0

    def run(self, seed: int) -> Result:
        self.result = Result(seed)
        self._events = 3
        self.result.trace.append(f"history {seed} played")
        self.judge(seed)  # type: ignore[operator]
        self.result.events = self._events
        return self.result


def test_an_oracle_that_raises_is_a_violation_of_its_seed_and_the_run_goes_on() -> None:
    sim = _Sim(_RaisingOracle(bad_seed=12).expectation)
    seen: list[Result] = []
    summary = run_seeds(sim, range(10, 15), on_result=seen.append)  # type: ignore[arg-type]
    assert summary.histories == 5
    assert [r.seed for r in seen] == [10, 11, 12, 13, 14]
    assert summary.violations == 1
    assert summary.by_code["judge_error"] == 1
    assert summary.first_seeds["judge_error"] == 12
    (bad,) = seen[2].violations
    assert bad.detail.startswith("TypeError: 'int' object is not iterable at ")
    assert "test_simulation_stopped.py" in bad.detail
    assert seen[2].events == 3
    assert seen[2].trace[0] == "history 12 played"  # what it did before, for --verbose
    assert seen[2].trace[-1].startswith("history stopped: judge_error TypeError")
    lines: list[str] = []
    report(summary, lines.append, kinds=False)
    assert any("violation judge_error (seq -): 1, first seed 12" in line for line in lines), lines


def _product_raises(seed: int) -> None:
    from domain.money import share

    if seed == 21:
        share(10, 5, 1)  # part > whole: the product's own ValueError


def test_a_product_crash_outside_a_task_is_a_violation_of_its_seed() -> None:
    summary: Summary = run_seeds(_Sim(_product_raises), range(20, 23))  # type: ignore[arg-type]
    assert summary.histories == 3
    assert list(summary.by_code) == ["product_crash"]
    assert summary.first_seeds["product_crash"] == 21
    (bad,) = summary.failures[0].violations
    assert bad.detail.startswith("ValueError: need 0 ≤ part ≤ whole at domain/money.py:")


def test_a_history_that_raises_before_it_began_is_still_its_own_seed() -> None:
    class _Early:
        result = Result(7)

        def run(self, seed: int) -> Result:
            raise RuntimeError("no database")

    summary = run_seeds(_Early(), range(8, 10))  # type: ignore[arg-type]
    assert summary.histories == 2
    assert [r.seed for r in summary.failures] == [8, 9]
    assert summary.failures[0].violations[0].code == "judge_error"

"""The long run's progress line (devrig/devrig/simulation.py `Progress`): where a stopped
run resumes is the lowest seed not yet done, whatever order the processes report in."""

from __future__ import annotations

from devrig.simulation import Progress


def test_resume_point_is_the_lowest_seed_not_done() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, first_seed=10, histories=8, every=0.0)
    progress.add(range(11, 18, 2), violations=1)  # process 1 of 2: 11, 13, 15, 17
    assert progress.resume == 10
    assert lines[-1].endswith("the rest: --first-seed 10 --histories 8")
    progress.add(range(10, 14, 2), violations=0)  # process 0: 10, 12
    assert progress.resume == 14
    progress.add(range(14, 18, 2), violations=0)  # process 0: 14, 16
    assert progress.resume == 18
    assert lines[-1].startswith("progress: 8/8 histories")
    assert "violations 1, every seed below 18 done" in lines[-1]
    assert "the rest" not in lines[-1]

"""The benchmark command works: its quickest variant runs and writes its result.

No timing assertions: figures depend on the machine. Long runs live in bench/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_scale_smallest_runs() -> None:
    from bench import scale

    # Smaller than --quick: two tiny databases, a handful of calls per query.
    rows, extra = scale.run(quick=True, small=500, large=2_000, repeats=20)
    names = {row.name.split(" @")[0] for row in rows}
    assert {
        "lock_order",
        "operations (in flight, history, next seq)",
        "sweep: Klarna re-read (UPDATE)",
    } <= names
    plan = extra["results"]["2000"]["queries"]["lock_order"]["nodes"]
    assert any("orders_pkey" in node for node in plan)


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "ingest" in out and "--quick" in out


@pytest.mark.timeout(300)
def test_recovery_smallest_runs() -> None:
    from bench import recovery

    # One Postgres restart under a running web and worker; the worker-kill half waits
    # out a lease, so the suite leaves it to `python -m bench recovery`.
    rows, extra = recovery.run(quick=True, kill=False)
    assert [row.name for row in rows][:1] == ["Postgres restarted -> capture at PSP, median"]
    assert len(extra["restarts"]) == 1


@pytest.mark.timeout(180)
def test_scale_webhooks_smallest_runs() -> None:
    from bench import scale

    rows, extra = scale.run_webhooks(large=5_000, small=1_000, repeats=12)
    names = {row.name.split(" @")[0] for row in rows}
    assert {"store new webhook", "prune: inbox bodies, per 1k rows"} <= names
    # Every figure is sampled at both sizes, retention's batches included (full batches
    # from the backlog, written again when spent).
    for n in ("1000", "5000"):
        figures = extra["results"][n]["figures"]
        assert all(figures[figure]["samples"] > 0 for figure in scale.FIGURES), figures


@pytest.mark.timeout(300)
def test_queues_smallest_runs() -> None:
    from bench import queues

    # Callbacks queued ahead of reconciles, two lanes; the one-queue round (which waits
    # out every callback) is left to `python -m bench queues`.
    rows, extra = queues.run(quick=True, reconciles=20, callbacks=200, before=False)
    assert len(rows) == 2 and set(extra["rounds"]) == {"baseline", "lanes"}
    assert extra["rounds"]["lanes"]["reconciles"] == 20


@pytest.mark.timeout(120)
def test_parsing_smallest_runs() -> None:
    from bench import parsing

    rows, extra = parsing.run(quick=True, sizes=(1024, 2048))
    assert any(row.name.startswith("shop: escaped_quotes_unterminated") for row in rows)
    assert "adyen: 100 items of escaped quotes" in extra["ns_per_byte"]


@pytest.mark.timeout(300)
def test_ingest_ab_smallest_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import ingest_ab

    assert ingest_ab.main([str(ROOT), str(ROOT), "--rounds", "1", "--requests", "100"]) == 0
    out = capsys.readouterr().out
    assert "A:" in out and "B:" in out and "web CPU" in out


@pytest.mark.timeout(300)
def test_ingest_statement_smallest_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import ingest_statement

    assert ingest_statement.main([str(ROOT), str(ROOT), "--batches", "2", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "WAL" in out and "baseline" in out and "Btree/INSERT_LEAF" in out


def test_the_wait_diagnostic_does_not_stop_the_child_it_samples(tmp_path: Path) -> None:
    """A blocking py-spy stops the child at every sample; on a loaded machine the child
    then ran 3.6x slower than its sibling and its shares described the sampling
    (docs/performance.md, round 8)."""
    from bench import waits

    argv = waits.spy_argv(Path("py-spy"), tmp_path / "raw.txt", 4242)
    assert "--nonblocking" in argv and "--idle" in argv
    assert argv[argv.index("--pid") + 1] == "4242"

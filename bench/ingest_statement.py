"""What Postgres does per shop webhook, on two trees' schemas: `python -m bench.ingest_statement
TREE_A TREE_B [--batches N] [--batch K]`.

A diagnostic (no target): the receiver's batch statement (data/inbox.py STORE_SHOP_EVENTS,
this tree's, with this tree's encoding of the bench's shop webhook: each a new order, as
`bench ingest` sends) run on a database migrated by each tree's own migrations, and the
naive baseline's INSERT (one statement and commit per webhook, bench/baseline_app.py), in
turn, batch by batch, on one connection each. Per webhook: the backend's CPU time
(/proc/<pid>/schedstat, on a CPU only: the run-queue wait of a loaded machine left out),
and the WAL it wrote (bytes between pg_current_wal_insert_lsn() before and after), which
does not depend on the load at all: each row version and each index entry is a WAL
record. So a change of the schema (an index fewer) shows in the same run, whatever the
load. Then the WAL of one more batch on each, by record type (pg_walinspect, where the
server has it): what each webhook writes, row by row and index by index.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from devrig.devstack import database_named
from psycopg.rows import dict_row

from bench.baseline_app import TABLE_SQL
from bench.common import stack
from bench.scale import Backend
from bench.traffic import shop_webhook
from service.ingest import _document, _params
from service.webhooks import parse_event


def _lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0' AS at").fetchone()
    assert row is not None
    return int(row["at"])


def _events(secret: str, n: int) -> list[tuple[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        request = shop_webhook(secret, f"st-{tag}-{i}")
        out.append((f"msg_{tag}_{i}", parse_event(request["body"].encode())))
    return out


def _wal_detail(
    conn: psycopg.Connection[Any], ranges: dict[str, tuple[int, int]], batch: int
) -> list[str]:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    except psycopg.Error:
        return ["  (no pg_walinspect on this server: no WAL detail)"]
    lines = ["  WAL of one batch by record type, per webhook (records, bytes, of which FPI):"]
    for name, (start, end) in ranges.items():
        rows = conn.execute(
            'SELECT "resource_manager/record_type" AS kind, count, record_size, fpi_size'
            " FROM pg_get_wal_stats(%s::pg_lsn, %s::pg_lsn, true) WHERE count > 0"
            " ORDER BY record_size + fpi_size DESC",
            (_as_lsn(start), _as_lsn(end)),
        ).fetchall()
        parts = ", ".join(
            f"{r['kind']} {r['count'] / batch:.2f} × {int(r['record_size']) / batch:.0f} B"
            + (f" (+{int(r['fpi_size']) / batch:.0f} FPI)" if r["fpi_size"] else "")
            for r in rows
        )
        lines.append(f"    {name}: {parts}")
    return lines


_BLOCK_REF = re.compile(r"blkref #0: rel (\d+)/(\d+)/(\d+)(?: fork (\w+))?")


def _wal_by_relation(
    conns: dict[str, psycopg.Connection[Any]], ranges: dict[str, tuple[int, int]], batch: int
) -> list[str]:
    """Each record of one batch given to the relation of its first block (a heap insert
    to its table, a B-tree insert to its index, a split to the index split), by the
    relation's name in that database: where the bytes go, table by table, index by
    index. A record without a block (a commit) is `(no block)`."""
    lines = ["  WAL of one batch by relation, per webhook (records, bytes incl. FPI):"]
    for name, (start, end) in ranges.items():
        conn = conns[name]
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            rows = conn.execute(
                "SELECT block_ref, record_length"
                " FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)",
                (_as_lsn(start), _as_lsn(end)),
            ).fetchall()
        except psycopg.Error:
            return ["  (no pg_walinspect on this server: no WAL by relation)"]
        per: dict[str, list[int]] = {}
        names: dict[int, str] = {}
        for row in rows:
            match = _BLOCK_REF.search(row["block_ref"] or "")
            if match is None:
                label = "(no block)"
            else:
                node = int(match.group(3))
                if node not in names:
                    found = conn.execute(
                        "SELECT pg_filenode_relation(0, %s)::text AS rel", (node,)
                    ).fetchone()
                    names[node] = (found and found["rel"]) or f"filenode {node}"
                fork = match.group(4) or "main"
                label = names[node] + ("" if fork == "main" else f" ({fork})")
            count_bytes = per.setdefault(label, [0, 0])
            count_bytes[0] += 1
            count_bytes[1] += int(row["record_length"])
        parts = ", ".join(
            f"{label} {c / batch:.2f} × {b / batch:.0f} B"
            for label, (c, b) in sorted(per.items(), key=lambda kv: -kv[1][1])
        )
        lines.append(f"    {name}: {parts}")
    return lines


def _tree_statement(tree: Path) -> str:
    """That tree's STORE_SHOP_EVENTS (its data/inbox.py imports nothing of the project):
    a change of the statement with its schema is measured on each side as written."""
    spec = importlib.util.spec_from_file_location(
        f"inbox_{abs(hash(tree.resolve()))}", tree / "data" / "inbox.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.STORE_SHOP_EVENTS)


def _as_lsn(at: int) -> str:
    return f"{at >> 32:X}/{at & 0xFFFFFFFF:X}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_statement", description=__doc__)
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    with stack() as bench:
        secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
        conns: dict[str, psycopg.Connection[Any]] = {}
        statements: dict[str, str] = {}
        with bench.db() as admin:
            admin.execute(TABLE_SQL)
            for label, tree in zip("AB", args.trees, strict=True):
                database = f"st_{label.lower()}"
                admin.execute(f"CREATE DATABASE {database}")
                url = database_named(bench.database_url, database)
                subprocess.run(
                    [sys.executable, "-m", "cli", "migrate"],
                    cwd=tree.resolve(),
                    env={**os.environ, **bench.env, "DATABASE_URL": url},
                    check=True,
                    capture_output=True,
                )
                statements[f"{label}:{tree.resolve().name}"] = _tree_statement(tree)
                conns[f"{label}:{tree.resolve().name}"] = psycopg.connect(
                    url, row_factory=dict_row, autocommit=True
                )
        conns["baseline"] = psycopg.connect(
            bench.database_url, row_factory=dict_row, autocommit=True
        )
        cpu: dict[str, list[float]] = {name: [] for name in conns}
        wal: dict[str, list[float]] = {name: [] for name in conns}
        backends = {}
        for name, conn in conns.items():
            row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
            assert row is not None
            backends[name] = Backend(int(row["pid"]))
        warmup = 10
        for b in range(warmup + args.batches):
            for name, conn in conns.items():
                events = _events(secret, args.batch)
                if name == "baseline":
                    bodies = [e.model_dump_json() for _, e in events]
                    before, at = backends[name].read(), _lsn(conn)
                    for body in bodies:
                        conn.execute(
                            "INSERT INTO bench_baseline (payload) VALUES (%s::jsonb) RETURNING id",
                            (body,),
                        ).fetchone()
                else:
                    params = [_params(key, event) for key, event in events]
                    document = _document(params, range(len(params)))
                    before, at = backends[name].read(), _lsn(conn)
                    rows = conn.execute(statements[name], {"rows": document}).fetchall()
                    assert all(r["outcome"] == "applied" for r in rows), rows
                after, end = backends[name].read(), _lsn(conn)
                if b >= warmup and before is not None and after is not None:
                    cpu[name].append((after[0] - before[0]) / 1e6 / args.batch)
                    wal[name].append((end - at) / args.batch)
        ranges = {}
        for name, conn in conns.items():
            events = _events(secret, args.batch)
            at = _lsn(conn)
            if name == "baseline":
                for _, event in events:
                    conn.execute(
                        "INSERT INTO bench_baseline (payload) VALUES (%s::jsonb)",
                        (event.model_dump_json(),),
                    )
            else:
                document = _document([_params(k, e) for k, e in events], range(len(events)))
                conn.execute(statements[name], {"rows": document}).fetchall()
            ranges[name] = (at, _lsn(conn))
        detail = _wal_detail(conns["baseline"], ranges, args.batch)
        detail += _wal_by_relation(conns, ranges, args.batch)
        for conn in conns.values():
            conn.close()
    base_cpu = statistics.median(cpu["baseline"])
    base_wal = statistics.mean(wal["baseline"])
    print(f"  {args.batches} batches of {args.batch} new-order shop webhooks, each in turn")
    for name in conns:
        c, w = statistics.median(cpu[name]), statistics.mean(wal[name])
        print(
            f"  {name:14s} backend CPU {c * 1000:6.1f} µs/webhook ({c / base_cpu:.2f}x baseline)"
            f"  WAL {w:6.0f} B/webhook ({w / base_wal:.2f}x baseline)"
        )
    for line in detail:
        print(line)
    names = [n for n in conns if n != "baseline"]
    a, b_ = names
    print(
        f"  {b_} / {a}: backend CPU {statistics.median(cpu[b_]) / statistics.median(cpu[a]):.3f}x"
        f"  WAL {statistics.mean(wal[b_]) / statistics.mean(wal[a]):.3f}x"
        f"  (load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

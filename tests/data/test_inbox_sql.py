"""The receiver's batch statement as psycopg sees it: short enough for its cache of
parsed statements, and the same SQL as written."""

from __future__ import annotations

import re

from psycopg import _queries

from data import inbox

_LITERAL = re.compile(r"'[^']*'")


def test_the_batch_statement_fits_psycopgs_statement_cache() -> None:
    # Longer, psycopg splits its placeholders out with a regex at every batch.
    assert len(inbox.STORE_SHOP_EVENTS.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH


def test_compacting_keeps_every_literal_and_placeholder() -> None:
    written, compacted = inbox.STORE_SHOP_EVENTS_TEXT, inbox.STORE_SHOP_EVENTS
    assert _LITERAL.findall(compacted) == _LITERAL.findall(written)
    assert re.findall(r"%\(\w+\)[sb]", compacted) == re.findall(r"%\(\w+\)[sb]", written)
    assert "--" not in compacted
    # Each token of the statement as written, comments aside, in the same order.
    tokens = " ".join(line.split("--", 1)[0] for line in written.splitlines()).split()
    assert compacted.split(" ") == tokens

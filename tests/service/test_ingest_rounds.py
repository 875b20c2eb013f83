"""A batch is split into statements in which no order, webhook-id or payment repeats;
the shortcut for a batch that repeats nothing must split as the general rule does."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from service.ingest import _rounds


@dataclass(frozen=True)
class _Event:
    id: str
    key: str
    provider: str
    psp_id: str


def _general(events: list[_Event]) -> list[list[int]]:
    rounds: list[list[int]] = []
    seen: list[set[tuple[str, ...]]] = []
    for i, p in enumerate(events):
        keys = {("order", p.id), ("key", p.key), ("payment", p.provider, p.psp_id.lower())}
        r = next((r for r in range(len(rounds)) if not keys & seen[r]), len(rounds))
        if r == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[r].append(i)
        seen[r] |= keys
    return rounds


_NAME = st.sampled_from(["a", "b", "c", "A", "d"])
_EVENT = st.builds(_Event, _NAME, _NAME, st.sampled_from(["klarna", "adyen"]), _NAME)


@given(st.lists(_EVENT, min_size=1, max_size=8))
def test_rounds_as_the_general_rule(events: list[_Event]) -> None:
    assert _rounds(events) == _general(events)  # type: ignore[arg-type]

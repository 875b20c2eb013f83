"""JSON from outside, parsed within bounds.

Every body that reaches a handler is checked here before a model sees it, in time
linear in its size (bench/parsing.py measures it on the worst inputs): nesting depth is
bounded, integers longer than a few
dozen digits are never turned into Python ints (`int()` of a long digit string is
quadratic), and strings that Postgres cannot store (NUL, an unpaired surrogate) are
refused with the path of the field that holds them. NaN and Infinity, which Python's
parser accepts and JSON does not, are refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ordersync.errors import BadRequest, ValidationFailed

MAX_DEPTH = 32
# Enough for any int64 and a sign; a longer literal is refused as a whole.
MAX_NUMBER_CHARS = 40

_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooLong:
    """A number literal too long to convert; reported with its path after parsing."""

    __slots__ = ("chars",)

    def __init__(self, text: str) -> None:
        self.chars = len(text)


class _Numbers:
    """The parser's number hooks for one body; remembers whether a literal was too long."""

    __slots__ = ("too_long",)

    def __init__(self) -> None:
        self.too_long = False

    def parse_int(self, text: str) -> int | _TooLong:
        if len(text) > MAX_NUMBER_CHARS:
            self.too_long = True
            return _TooLong(text)
        return int(text)

    def parse_float(self, text: str) -> float | _TooLong:
        if len(text) > MAX_NUMBER_CHARS:
            self.too_long = True
            return _TooLong(text)
        return float(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body; BadRequest if it is not JSON, ValidationFailed (naming the
    field) if it holds a value outside the bounds.

    Linear in the body's size: C's parser reads it once (it refuses nesting beyond the
    interpreter's recursion limit with RecursionError, without crashing), numbers are
    measured before any conversion, and one walk without recursion measures the depth
    and finds the bad values, unless a few scans of the raw bytes prove there is nothing
    to find (most bodies: `_plain`). No regular expression scans the raw text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", fields=[_field("body", "not UTF-8")]) from None
    numbers = _Numbers()
    try:
        data = json.loads(
            text,
            parse_int=numbers.parse_int,
            parse_float=numbers.parse_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError:
        # json.JSONDecodeError is a ValueError; its message names a position, not content.
        raise BadRequest("the body is not JSON", fields=[_field("body", "not JSON")]) from None
    if not numbers.too_long and _plain(body, max_depth):
        return data  # nothing the walk could find
    problems = _problems(data, max_depth)
    if problems:
        raise ValidationFailed("the body holds values outside the bounds", fields=problems)
    return data


def _plain(body: bytes, max_depth: int) -> bool:
    """Whether the raw body alone proves what the walk would find, in a few linear scans
    in C: no more openers than `max_depth` bounds the nesting (an opener inside a string
    only overcounts), and Postgres's two bad characters can only come from escapes (the
    parser refuses raw control characters, and UTF-8 cannot encode a surrogate). A body
    that fails this proves nothing and is walked."""
    return (
        body.count(b"{") + body.count(b"[") <= max_depth
        and b"\\u0000" not in body
        and b"\\ud" not in body
        and b"\\uD" not in body
    )


# Bytes to "0" for a digit and " " for anything else: a run of digits is a run of "0".
_DIGITS = bytes.maketrans(
    bytes(range(256)), bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
)
# A number literal longer than MAX_NUMBER_CHARS has at most three runs of digits
# (integer, fraction, exponent) and four other characters, so one run of at least this.
_LONG_DIGIT_RUN = b"0" * ((MAX_NUMBER_CHARS - 4) // 3 + 1)


def plain(body: bytes) -> bool:
    """Whether `body`, if it is JSON, holds nothing `loads` would refuse beyond its
    syntax: nesting within bounds, no NUL or surrogate, no number literal too long to
    convert (no long run of digits). Linear: a few scans in C. Such a body may be read
    by a model's own JSON parser; any other goes through `loads`."""
    return _plain(body, MAX_DEPTH) and _LONG_DIGIT_RUN not in body.translate(_DIGITS)


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        "the body is nested too deeply",
        fields=[_field("body", f"nested deeper than {max_depth}")],
    )


def text_problem(value: str) -> str | None:
    """Why Postgres could not store `value` as text, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if _SURROGATE.search(value):
        return "contains an unpaired surrogate"
    return None


# Values that are always fine: skipped without a call.
_PLAIN = frozenset({int, float, bool, type(None)})


def _problems(data: Any, max_depth: int = MAX_DEPTH, limit: int = 10) -> list[dict[str, str]]:
    """Bad values with their dotted paths (at most `limit`), in one walk without
    recursion that also bounds the depth (BadRequest beyond `max_depth`). A path is
    built only for a container or a bad value, never for every number."""
    root = _leaf_problem(data)
    if root:
        return [_field("body", root)]
    found: list[dict[str, str]] = []
    stack: list[tuple[str, Any, int]] = [("", data, 1)]
    while stack:
        path, value, depth = stack.pop()
        if depth > max_depth:
            raise _too_deep(max_depth)
        if len(found) >= limit:
            continue  # the rest is walked for its depth only
        if isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                if problem:
                    found.append(_field(path or "body", f"a key {problem}"))
                elif item.__class__ not in _PLAIN:
                    _visit(found, stack, path, key, item, depth)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if item.__class__ not in _PLAIN:
                    _visit(found, stack, path, str(index), item, depth)
    return found[:limit]


def _visit(
    found: list[dict[str, str]],
    stack: list[tuple[str, Any, int]],
    path: str,
    key: str,
    item: Any,
    depth: int,
) -> None:
    if isinstance(item, dict | list):
        stack.append((_child(path, key), item, depth + 1))
        return
    problem = _leaf_problem(item)
    if problem:
        found.append(_field(_child(path, key), problem))


def _leaf_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, _TooLong):
        return f"a number of {value.chars} characters"
    return None


MAX_PATH_CHARS = 200


def _child(path: str, key: str) -> str:
    # Cut as it is built: a long key above many values must not be copied for each.
    return (f"{path}.{key[:MAX_PATH_CHARS]}" if path else key[:MAX_PATH_CHARS])[:MAX_PATH_CHARS]


def _field(path: str, message: str) -> dict[str, str]:
    # A path is built from the sender's keys: echoed back, but bounded.
    return {"path": path[:MAX_PATH_CHARS], "message": message}

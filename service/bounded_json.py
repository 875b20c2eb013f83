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


def _parse_int(text: str) -> int | _TooLong:
    return _TooLong(text) if len(text) > MAX_NUMBER_CHARS else int(text)


def _parse_float(text: str) -> float | _TooLong:
    return _TooLong(text) if len(text) > MAX_NUMBER_CHARS else float(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body; BadRequest if it is not JSON, ValidationFailed (naming the
    field) if it holds a value outside the bounds.

    Linear in the body's size: C's parser reads it once (it refuses nesting beyond the
    interpreter's recursion limit with RecursionError, without crashing), numbers are
    measured before any conversion, and one walk without recursion measures the depth
    and finds the bad values. No regular expression scans the raw text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", fields=[_field("body", "not UTF-8")]) from None
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError:
        # json.JSONDecodeError is a ValueError; its message names a position, not content.
        raise BadRequest("the body is not JSON", fields=[_field("body", "not JSON")]) from None
    if nesting_depth(data) > max_depth:
        raise _too_deep(max_depth)
    problems = _problems(data)
    if problems:
        raise ValidationFailed("the body holds values outside the bounds", fields=problems)
    return data


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        "the body is nested too deeply",
        fields=[_field("body", f"nested deeper than {max_depth}")],
    )


def nesting_depth(data: Any) -> int:
    """The deepest nesting of arrays and objects in parsed JSON, walked without
    recursion (each container is visited once)."""
    deepest = 0
    stack: list[tuple[int, Any]] = [(0, data)]
    while stack:
        depth, value = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((depth, item) for item in value if isinstance(item, dict | list))
    return deepest


def text_problem(value: str) -> str | None:
    """Why Postgres could not store `value` as text, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if _SURROGATE.search(value):
        return "contains an unpaired surrogate"
    return None


def _problems(data: Any, limit: int = 10) -> list[dict[str, str]]:
    """Bad values with their dotted paths (at most `limit`), walked without recursion."""
    found: list[dict[str, str]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack and len(found) < limit:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                found.append(_field(path or "body", problem))
        elif isinstance(value, _TooLong):
            found.append(_field(path or "body", f"a number of {value.chars} characters"))
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                if problem:
                    found.append(_field(path or "body", f"a key {problem}"))
                    continue
                stack.append((_child(path, key), item))
        elif isinstance(value, list):
            stack.extend((_child(path, str(i)), v) for i, v in enumerate(value))
    return found


MAX_PATH_CHARS = 200


def _child(path: str, key: str) -> str:
    # Cut as it is built: a long key above many values must not be copied for each.
    return (f"{path}.{key[:MAX_PATH_CHARS]}" if path else key[:MAX_PATH_CHARS])[:MAX_PATH_CHARS]


def _field(path: str, message: str) -> dict[str, str]:
    # A path is built from the sender's keys: echoed back, but bounded.
    return {"path": path[:MAX_PATH_CHARS], "message": message}

"""JSON from outside, parsed within bounds.

Every body that reaches a handler is checked here before a model sees it: nesting
depth is counted on the raw text before the parser recurses, integers longer than a few
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

# String literals, then everything but brackets, are removed before counting depth.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
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


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, counted without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = deepest = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body; BadRequest if it is not JSON, ValidationFailed (naming the
    field) if it holds a value outside the bounds."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", fields=[_field("body", "not UTF-8")]) from None
    if nesting_depth(text) > max_depth:
        raise BadRequest(
            "the body is nested too deeply",
            fields=[_field("body", f"nested deeper than {max_depth}")],
        )
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError):
        # json.JSONDecodeError is a ValueError; its message names a position, not content.
        raise BadRequest("the body is not JSON", fields=[_field("body", "not JSON")]) from None
    problems = _problems(data)
    if problems:
        raise ValidationFailed("the body holds values outside the bounds", fields=problems)
    return data


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
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return found


MAX_PATH_CHARS = 200


def _field(path: str, message: str) -> dict[str, str]:
    # A path is built from the sender's keys: echoed back, but bounded.
    return {"path": path[:MAX_PATH_CHARS], "message": message}

"""Console sessions and CSRF tokens, named operator tokens, and the operator words:
pure functions, no stack."""

from __future__ import annotations

import pytest
from jinja2 import Environment

from ordersync.errors import ConfigError
from ordersync.settings import Settings, get_settings
from service import operator_words as words
from service.console import routes
from service.console import session as sessions
from service.orders_api import identify

OPERATORS = [("alice", "a" * 20), ("bob", "b" * 20), ("operator", "o" * 20)]


def test_a_session_names_its_operator_and_expires() -> None:
    cookie = sessions.issue(OPERATORS, "alice", now=1000)
    session = sessions.verify(OPERATORS, cookie, now=1001)
    assert session is not None and session.operator == "alice"
    assert "=" not in cookie  # never sent quoted
    assert sessions.verify(OPERATORS, cookie, now=1000 + sessions.SESSION_SECONDS + 1) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),
        lambda c: "x" + c,
        lambda c: c.split(".")[0],
        lambda c: "",
        lambda c: "é.é",
        lambda c: "\ud800",
        lambda c: c * 20,
    ],
)
def test_a_forged_session_is_refused(tamper: object) -> None:
    cookie = sessions.issue(OPERATORS, "alice")
    assert sessions.verify(OPERATORS, tamper(cookie)) is None  # type: ignore[operator]


def test_changing_or_removing_a_token_ends_its_sessions() -> None:
    cookie = sessions.issue(OPERATORS, "bob")
    assert sessions.verify([("alice", "a" * 20), ("bob", "c" * 20)], cookie) is None
    assert sessions.verify([("alice", "a" * 20)], cookie) is None
    assert sessions.verify([], cookie) is None


def test_csrf_tokens_belong_to_their_session() -> None:
    one = sessions.verify(OPERATORS, sessions.issue(OPERATORS, "alice"))
    two = sessions.verify(OPERATORS, sessions.issue(OPERATORS, "alice"))
    assert one is not None and two is not None
    token = sessions.csrf_token(OPERATORS, one)
    assert sessions.csrf_ok(OPERATORS, one, token)
    assert not sessions.csrf_ok(OPERATORS, two, token)
    for wrong in (None, "", "é" * 64, "\ud800", token[:-1]):
        assert not sessions.csrf_ok(OPERATORS, one, wrong)


def test_tokens_identify_their_operator() -> None:
    assert identify(OPERATORS, "b" * 20) == "bob"
    assert identify(OPERATORS, "o" * 20) == "operator"
    assert identify(OPERATORS, "x" * 20) is None
    assert identify(OPERATORS, "") is None


def test_operator_tokens_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(operator_token="t" * 20, operator_tokens=f"alice={'a' * 16} bob={'b' * 16}")
    assert settings.operators == [("alice", "a" * 16), ("bob", "b" * 16), ("operator", "t" * 20)]
    assert Settings(operator_tokens=" ").operators == []
    for bad in ("alice", "alice=short", f"al ice={'a' * 16}", f"a={'a' * 16} a={'b' * 16}"):
        monkeypatch.setenv("OPERATOR_TOKENS", bad)
        get_settings.cache_clear()
        with pytest.raises(ConfigError) as refused:
            get_settings()
        assert "OPERATOR_TOKENS" in str(refused.value)
        assert "a" * 16 not in str(refused.value)  # never the value
    get_settings.cache_clear()


def test_every_reason_has_words_and_an_unknown_one_is_described_generically() -> None:
    for code in words.REASONS:
        explained = words.reason_words("needs_attention", code)
        assert explained.what and explained.todo
    unknown = words.reason_words("needs_attention", "something_new")
    assert "something_new" in unknown.what
    assert unknown.todo == words.FLAGS["needs_attention"].todo
    assert words.reason_words("needs_attention", "capture_after_succeeded") == (
        words.ADYEN_CONTRADICTION
    )
    assert "reconcile" in words.flag_words("some_new_flag").todo.lower()


def test_templates_escape_every_value() -> None:
    env: Environment = routes.environment()
    html = env.from_string("{{ x }}").render(x="<script>alert(1)</script>")
    assert html == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert routes.money(-1234, "EUR") == "−12.34 EUR"
    assert routes.money(None) == "–"
    assert routes.duration(3725) == "1 h 2 min"
    assert routes.pretty('{"a":1}') == '{\n  "a": 1\n}'
    assert routes.pretty("not json") == "not json"

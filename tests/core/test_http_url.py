"""`url_at` gives what httpx's own parse of the joined text gives, or parses it so."""

from __future__ import annotations

import httpx
import pytest

from ordersync.http import url_at

BASES = [
    "http://127.0.0.1:8123",
    "http://127.0.0.1:8123/",
    "https://api.klarna.com",
    "https://api-na.playground.klarna.com/sandbox",
    "http://[::1]:9000/psp",
    "http://user:pw@host:1/p",
    "http://host/p?x=1",
]
PATHS = [
    "",
    "/ordermanagement/v1/orders/0f8e7a4c-1b2d-4e5f-9a8b-7c6d5e4f3a2b/captures",
    "/ordermanagement/v1/orders/ab_c~1/extend-authorization-time",
    "/orders/a b/captures",
    "/orders/%2F/x",
    "/orders/../admin",
    "/orders/./x",
    "/orders/ü",
    "/orders/x?y=1",
    "/orders/x#f",
    "orders",
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("path", PATHS)
def test_a_joined_url_is_what_httpx_parses_from_the_text(base: str, path: str) -> None:
    try:
        expected = httpx.URL(base + path)
    except httpx.InvalidURL:
        with pytest.raises(httpx.InvalidURL):
            url_at(base, path)
        return
    got = url_at(base, path)
    assert got == expected
    assert str(got) == str(expected)
    assert got.raw_path == expected.raw_path
    assert (got.scheme, got.host, got.port) == (expected.scheme, expected.host, expected.port)


def test_a_plain_path_is_not_parsed_again() -> None:
    base = "http://127.0.0.1:8123"
    url = url_at(base, "/orders/abc-1/captures")
    assert url.raw_path == b"/orders/abc-1/captures"
    assert url_at(base) is url_at(base)  # the base parsed once

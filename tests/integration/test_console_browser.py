"""The operator console in a real browser: Playwright driving Debian's Chromium
(`apt-get install chromium`; never `playwright install`, which downloads a browser of
its own) against the real stack. An operator who has never seen ordersync finds the
order Klarna refused to increase, reads what happened and what to do, and acts; a halted
order is reconciled and leaves the list; a failed notification is reprocessed; a POST
without the CSRF token is refused; axe-core finds no serious accessibility violation.

With ORDERSYNC_CONSOLE_SCREENSHOTS=docs/console the run saves a screenshot of each page
there (the README shows them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.console import (
    failed_notification,
    flags,
    halted_order,
    operator_token,
    refused_order,
)
from tests.integration.stack import Stack, wait_for

CHROMIUM = os.environ.get("ORDERSYNC_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that reaches beyond loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright (pip install -e '.[test]')"
    try:
        import axe_playwright_python  # noqa: F401
    except ImportError:
        return "the Python package axe-playwright-python (pip install -e '.[test]')"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"Chromium at {CHROMIUM} (apt-get install chromium, or set ORDERSYNC_CHROMIUM)"
    return None


MISSING = _missing()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(MISSING is not None, reason=f"browser tests need {MISSING}"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack.web_url)
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("ORDERSYNC_CONSOLE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def accessible(page: Any) -> None:
    """No serious or critical axe-core violation on the page."""
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]
    assert serious == [], "\n".join(serious)


def log_in(page: Any, stack: Stack, name: str = "alice", shots: Path | None = None) -> None:
    page.goto("/console")
    assert page.url.endswith("/console/login?next=%2Fconsole")
    if shots is not None:
        accessible(page)
        page.screenshot(path=str(shots / "login.png"))
    page.get_by_label("Operator token").fill(operator_token(stack, name))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console")


def test_an_operator_finds_the_refused_order_understands_it_and_acts(
    page: Any, stack: Stack, shots: Path
) -> None:
    refused = refused_order(stack)
    halted, _ = halted_order(stack)
    stack.clear_faults()
    log_in(page, stack, shots=shots)

    # Needs a person: both orders, each saying why in words.
    rows = page.locator("table.orders tbody tr")
    assert rows.filter(has_text=refused).count() == 1
    assert rows.filter(has_text=halted).count() == 1
    row = rows.filter(has_text=refused)
    assert "Klarna refused to increase" in row.inner_text()
    accessible(page)
    page.screenshot(path=str(shots / "needs-a-person.png"), full_page=True)

    # Filter by flag, then search by the shop order id.
    page.get_by_label("Flag").select_option("needs_new_order")
    page.get_by_label("Shop order id or PSP reference").fill(refused)
    page.get_by_role("button", name="Filter").click()
    assert page.locator("table.orders tbody tr").count() == 1
    page.get_by_role("link", name=refused).click()

    # One order: what happened, the figures, what to do, the story.
    body = page.locator("main").inner_text()
    for words in [
        "Klarna refused to increase the authorized amount",
        "Items not authorized",
        "Hat",
        "Ask the customer for a new order",
        "order.new_order_required",
        "refused by the payment provider",
        "NOT_ALLOWED",
        "correlation id",
    ]:
        assert words in body, words
    refusal = page.locator(".entry-operation").filter(has_text="refused by the payment provider")
    refusal.get_by_text("The exact request sent").click()
    assert '"order_amount": 10000' in refusal.inner_text()
    accessible(page)
    page.screenshot(path=str(shots / "order.png"), full_page=True)

    # Act: acknowledge the flag with a note (confirmed on a page of its own).
    page.get_by_role("link", name="Acknowledge with a note").click()
    page.get_by_label("Note").fill("Asked the customer to order the hat separately <b>today</b>")
    accessible(page)
    page.screenshot(path=str(shots / "confirm.png"), full_page=True)
    page.get_by_role("button", name="Acknowledge the flag").click()
    assert "Your note is recorded" in page.get_by_role("status").inner_text()
    acknowledged = page.locator(".acks").inner_text()
    assert "alice" in acknowledged and "<b>today</b>" in acknowledged  # shown, escaped
    assert flags(stack, refused) == ["needs_new_order"]  # the flag stays


def test_reconcile_a_halted_order_and_see_it_leave_the_list(page: Any, stack: Stack) -> None:
    halted, _ = halted_order(stack)
    stack.clear_faults()  # the cause is fixed: Klarna answers again
    log_in(page, stack, "bob")
    page.goto("/console?flag=needs_attention")
    page.get_by_role("link", name=halted).click()
    assert "automatic work on this order is halted" in page.locator("main").inner_text()
    page.get_by_role("link", name="Reconcile now").first.click()
    page.get_by_role("button", name="Reconcile now").click()
    assert "Reconcile requested" in page.get_by_role("status").inner_text()
    assert "bob reconciled now" in page.locator(".timeline").inner_text()

    def gone() -> bool:
        page.goto("/console?flag=needs_attention")
        return page.get_by_role("link", name=halted).count() == 0

    wait_for(gone, timeout=30, interval=0.5, what="the order to leave the list")
    assert flags(stack, halted) == []


def test_reprocess_a_failed_notification(page: Any, stack: Stack) -> None:
    order_id, inbox_id = failed_notification(stack)
    log_in(page, stack)
    page.goto(f"/console/orders/{order_id}")
    entry = page.locator(".entry-adyen_notification").filter(has_text="failed")
    entry.get_by_role("link", name="Reprocess").click()
    page.get_by_role("button", name="Reprocess this notification").click()
    assert "processed again" in page.get_by_role("status").inner_text()
    assert "alice reprocessed a notification" in page.locator(".timeline").inner_text()

    def outcome() -> str | None:
        with stack.db() as conn:
            row = conn.execute("SELECT outcome FROM inbox WHERE id = %s", (inbox_id,)).fetchone()
        return row["outcome"] if row else None

    # It still matches nothing, so it ends orphaned, no longer failed.
    wait_for(lambda: outcome() == "orphaned", timeout=30, what="processed again")


def test_a_post_without_csrf_is_refused_and_health_is_shown(
    page: Any, stack: Stack, shots: Path
) -> None:
    refused = refused_order(stack)
    log_in(page, stack)
    # The session cookie goes along; the CSRF token does not.
    answer = page.request.post(f"/console/orders/{refused}/reconcile", form={"target": ""})
    assert answer.status == 403
    answer = page.request.post(
        f"/console/orders/{refused}/acknowledge",
        form={"target": "needs_new_order", "note": "x", "csrf": "forged"},
    )
    assert answer.status == 403
    page.goto("/console/health")
    body = page.locator("main").inner_text()
    assert "Last sweep by the worker" in body and "never" not in body
    accessible(page)
    page.screenshot(path=str(shots / "health.png"), full_page=True)

"""The web shop page in a real headless Chromium, against a live server and a real settler.

Screenshots of every screen go to test-output/browser/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from accounts.services import token_create
from coupons.models import Coupon
from devtools.browser import chromium_page
from devtools.testing import Settler, make_product, make_user
from inventory import redis_counts
from orders.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SHOTS = Path(settings.BASE_DIR) / "test-output" / "browser"


@pytest.fixture
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        yield page


@pytest.fixture
def slow_payment_worker():
    """A settler whose payment takes a moment, so the progress screen can be seen."""
    worker = Settler(extra_env={"PAYMENT_GATEWAY_LATENCY_MS": "1500"})
    yield worker
    worker.stop()


def _sign_in(page, live_server, user, shot_prefix):
    page.goto(f"{live_server.url}/shop/")
    page.screenshot(path=SHOTS / f"{shot_prefix}-1-sign-in.png", full_page=True)
    page.fill("#token", token_create(user=user).key)
    page.click("#signin-form button")
    page.wait_for_selector("#catalog:not([hidden])")


def test_placing_an_order_shows_progress_then_the_completion_screen(page, live_server, slow_payment_worker):
    user = make_user(balance=1_000)
    tea = make_product(name="Green tea", price=120, stock_quantity=50)
    make_product(name="Matcha whisk", price=300, stock_quantity=5)

    _sign_in(page, live_server, user, "paid")
    card = page.locator(f".product[data-product-id='{tea.id}']")
    card.get_by_label("more").click()
    card.get_by_label("more").click()
    assert page.inner_text("#total") == "240"
    page.screenshot(path=SHOTS / "paid-2-catalog.png", full_page=True)
    page.click("#place")
    page.wait_for_selector(".steps span.done[data-step=reserved]")
    page.screenshot(path=SHOTS / "paid-3-progress.png", full_page=True)
    page.wait_for_selector("#done:not([hidden])", timeout=60_000)
    page.screenshot(path=SHOTS / "paid-4-done.png", full_page=True)

    assert "is paid" in page.inner_text("#done-title")
    assert "paid 240" in page.inner_text("#done-summary") and "balance now 760" in page.inner_text("#done-summary")
    order = Order.objects.get()
    assert (order.status, order.paid_amount) == ("PAID", 240)
    assert redis_counts.available(product_ids=[tea.id]) == {tea.id: 48}


def test_on_an_idle_server_the_shop_shows_the_order_paid_by_a_settler_its_commit_woke(page, live_server):
    """The settler's poll is an hour: only the order's own NOTIFY pays it within the wait."""
    user = make_user(balance=1_000)
    tea = make_product(name="Green tea", price=120, stock_quantity=50)
    settler = Settler(name="idle", extra_env={"SETTLE_IDLE_WAIT_SECONDS": "3600"})
    try:
        _sign_in(page, live_server, user, "quick")
        page.locator(f".product[data-product-id='{tea.id}']").get_by_label("more").click()
        with page.expect_response(lambda r: r.url.endswith("/api/v1/orders") and r.request.method == "POST") as placed:
            page.click("#place")
        assert placed.value.status == 202
        # The settler is woken by the order's commit, and the page asks again every 300 ms.
        page.wait_for_selector("#done:not([hidden])", timeout=60_000)
    finally:
        settler.stop()
    page.screenshot(path=SHOTS / "quick-2-paid.png", full_page=True)
    assert "is paid" in page.inner_text("#done-title")
    assert Order.objects.get().status == "PAID"


def test_a_payment_that_fails_shows_a_clear_failure_screen_and_gives_the_stock_back(
    page, live_server, slow_payment_worker
):
    user = make_user(balance=100)
    whisk = make_product(name="Matcha whisk", price=300, stock_quantity=5)

    _sign_in(page, live_server, user, "failed")
    page.locator(f".product[data-product-id='{whisk.id}']").get_by_label("more").click()
    page.click("#place")
    page.wait_for_selector("#failed:not([hidden])", timeout=60_000)
    page.screenshot(path=SHOTS / "failed-2-payment-failed.png", full_page=True)

    assert page.inner_text("#failed-title") == "Payment failed"
    assert "nothing was charged" in page.inner_text("#failed-text")
    assert Order.objects.get().status == "CANCELLED"
    assert redis_counts.available(product_ids=[whisk.id]) == {whisk.id: 5}


def test_sold_out_is_explained_on_a_phone_sized_screen(page, live_server):
    user = make_user(balance=10_000)
    whisk = make_product(name="Matcha whisk", price=300, stock_quantity=1)
    page.set_viewport_size({"width": 390, "height": 844})

    _sign_in(page, live_server, user, "phone")
    page.screenshot(path=SHOTS / "phone-2-catalog.png", full_page=True)
    more = page.locator(f".product[data-product-id='{whisk.id}']").get_by_label("more")
    more.click()
    more.click()
    page.click("#place")
    page.wait_for_selector("#failed:not([hidden])")
    page.screenshot(path=SHOTS / "phone-3-sold-out.png", full_page=True)

    assert page.inner_text("#failed-title") == "Sold out"
    assert "has 1 left and you asked for 2" in page.inner_text("#failed-text")
    assert Order.objects.count() == 0


# Names an attacker with admin access could give products: markup that runs script if it is
# ever parsed as HTML on the shop's origin (where the customer's token sits in localStorage).
HOSTILE_NAMES = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>"]


def test_product_names_are_shown_as_text_and_nothing_in_them_runs(page, live_server):
    user = make_user(balance=1_000)
    products = [make_product(name=name, price=10, stock_quantity=5) for name in HOSTILE_NAMES]
    settler = Settler(name="xss")
    try:
        shop = page.goto(f"{live_server.url}/shop/")
        assert "script-src 'self'" in shop.headers["content-security-policy"]
        _sign_in(page, live_server, user, "xss")
        for product in products:
            card = page.locator(f".product[data-product-id='{product.id}']")
            assert card.locator(".name").inner_text() == product.name
            card.get_by_label("more").click()
        page.click("#place")
        page.wait_for_selector("#done:not([hidden])", timeout=60_000)
    finally:
        settler.stop()
    page.screenshot(path=SHOTS / "xss-2-done.png", full_page=True)

    shown = page.inner_text("#done-items")
    assert all(name in shown for name in HOSTILE_NAMES), shown
    assert page.locator("main img, main script").count() == 0  # text, not elements
    assert page.evaluate("window.__xss") is None
    assert page.console_errors == []  # nothing was even tried (a blocked handler would show here)
    assert Order.objects.get().status == "PAID"


def test_a_coupon_entered_in_the_shop_is_applied_and_a_bad_one_is_explained_under_its_field(page, live_server):
    user = make_user(balance=1_000)
    tea = make_product(name="Green tea", price=120, stock_quantity=50)
    Coupon.objects.create(code="TEA20", kind=Coupon.Kind.FIXED, value=20)
    settler = Settler(name="coupon")
    try:
        _sign_in(page, live_server, user, "coupon")
        page.locator(f".product[data-product-id='{tea.id}']").get_by_label("more").click()
        page.fill("#coupon", "NOPE")
        page.click("#place")
        page.wait_for_selector("#catalog:not([hidden]) #coupon-error:not(:empty)")
        page.screenshot(path=SHOTS / "coupon-2-unknown.png", full_page=True)
        assert "There is no such coupon" in page.inner_text("#coupon-error")
        assert Order.objects.count() == 0 and redis_counts.available(product_ids=[tea.id]) == {tea.id: 50}

        page.fill("#coupon", "TEA20")
        page.click("#place")
        page.wait_for_selector("#done:not([hidden])", timeout=60_000)
        page.screenshot(path=SHOTS / "coupon-3-done.png", full_page=True)
    finally:
        settler.stop()

    assert "discount 20" in page.inner_text("#done-summary") and "paid 100" in page.inner_text("#done-summary")
    assert page.inner_text("#coupon-error") == ""
    order = Order.objects.get()
    assert (order.coupon_code, order.discount_amount, order.paid_amount) == ("TEA20", 20, 100)
    # (the browser reports the refused coupon's 409 itself; nothing else may show)
    assert [e for e in page.console_errors if "status of 409" not in e] == []

"""The web shop page in a real headless Chromium, against a live server and a real settler.

Screenshots of every screen go to test-output/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.models import ApiToken
from coupons.models import Coupon
from devtools.browser import chromium_page
from devtools.testing import Settler, client_for, make_product, make_user, order_body, wait_for
from inventory import redis_counts
from inventory.models import Product
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


PASSWORD = "a buyer's own passphrase"


def _with_password(user):
    user.set_password(PASSWORD)
    user.save()
    return user


def _sign_in(page, live_server, user, shot_prefix):
    """Signed in as a buyer does: username and password in the form."""
    _with_password(user)
    page.goto(f"{live_server.url}/shop/")
    page.screenshot(path=SHOTS / f"{shot_prefix}-1-sign-in.png", full_page=True)
    page.fill("#username", user.username)
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
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
    page.wait_for_selector(".steps li.done[data-step=reserved]")
    # Each step as the order's progress reports it, with its time (the settler's batch reports
    # paying and paid at its commit, after the gateway's 1.5 s).
    reserved = page.inner_text(".steps li[data-step=reserved]")
    page.screenshot(path=SHOTS / "paid-3-progress.png", full_page=True)
    page.wait_for_selector("#done:not([hidden])", timeout=60_000)
    page.screenshot(path=SHOTS / "paid-4-done.png", full_page=True)

    assert re.fullmatch(r"Reserved\s+\d\d:\d\d:\d\d( [AP]M)?", reserved), reserved
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
    """The last unit goes to another buyer between the page's stock poll and the click."""
    user, other = make_user(balance=10_000), make_user(balance=10_000)
    whisk = make_product(name="Matcha whisk", price=300, stock_quantity=1)
    page.set_viewport_size({"width": 390, "height": 844})

    _sign_in(page, live_server, user, "phone")
    page.screenshot(path=SHOTS / "phone-2-catalog.png", full_page=True)
    more = page.locator(f".product[data-product-id='{whisk.id}']").get_by_label("more")
    more.click()
    assert more.is_disabled()  # no more than the stock can be asked for
    with page.expect_response(lambda r: "/api/v1/products" in r.url):
        pass  # a stock poll: the next is 2 s away
    assert client_for(other).post("/api/v1/orders", order_body(other, (whisk, 1)), format="json").status_code == 201
    page.click("#place")
    page.wait_for_selector("#failed:not([hidden])")
    page.screenshot(path=SHOTS / "phone-3-sold-out.png", full_page=True)

    assert page.inner_text("#failed-title") == "Sold out"
    assert "Matcha whisk has 0 left and you asked for 1" in page.inner_text("#failed-text")
    assert Order.objects.filter(user=user).count() == 0


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


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_a_buyer_signs_in_with_a_password_and_sign_out_revokes_the_token_on_the_server(page, live_server):
    user = make_user(balance=1_000)
    make_product(name="Green tea", price=120, stock_quantity=50)

    _sign_in(page, live_server, user, "password")
    page.screenshot(path=SHOTS / "password-2-signed-in.png", full_page=True)
    token = page.evaluate("localStorage.getItem('shopToken')")
    assert f"User {user.id}" in page.inner_text("#who")
    assert _bearer(token).get("/api/v1/accounts/me").status_code == 200
    assert ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() == 1

    with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/token") and r.request.method == "DELETE") as out:
        page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    page.screenshot(path=SHOTS / "password-3-signed-out.png", full_page=True)

    assert out.value.status == 204
    assert page.inner_text("#signin-note") == "You are signed out."
    assert page.evaluate("localStorage.getItem('shopToken')") is None and page.inner_text("#who") == ""
    # Revoked on the server: every process refuses it within TOKEN_REVOCATION_CHECK_SECONDS.
    wait_for(lambda: _bearer(token).get("/api/v1/accounts/me").status_code == 401, timeout=5, what="a 401")
    assert ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() == 0
    page.reload()
    page.wait_for_selector("#signin:not([hidden])")
    assert page.locator("#catalog").is_hidden()


def test_a_wrong_password_is_explained_and_signs_nobody_in(page, live_server):
    user = _with_password(make_user(balance=1_000))

    page.goto(f"{live_server.url}/shop/")
    page.fill("#username", user.username)
    page.fill("#password", "not the password")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/token")) as login:
        page.click("#signin-button")
    page.wait_for_selector("#signin-error:not(:empty)")
    page.screenshot(path=SHOTS / "password-wrong.png", full_page=True)

    assert login.value.status == 401
    assert page.inner_text("#signin-error") == "That username and password do not match. Check both and try again."
    assert page.locator("#catalog").is_hidden() and page.evaluate("localStorage.getItem('shopToken')") is None
    assert not ApiToken.objects.filter(user=user).exists()
    # (the browser reports the refused login's 401 itself; nothing else may show)
    assert [e for e in page.console_errors if "status of 401" not in e] == []


def test_the_catalog_shows_stock_as_others_buy_and_a_changed_price_is_explained_in_the_basket(page, live_server):
    user, other = make_user(balance=10_000), make_user(balance=10_000)
    tea = make_product(name="Green tea", price=120, stock_quantity=50)
    card = page.locator(f".product[data-product-id='{tea.id}']")

    _sign_in(page, live_server, user, "live")
    assert card.locator("[data-stock]").inner_text() == "50 in stock"
    assert client_for(other).post("/api/v1/orders", order_body(other, (tea, 3)), format="json").status_code == 201
    page.wait_for_selector(f".product[data-product-id='{tea.id}'] [data-stock]:text-is('47 in stock')", timeout=10_000)

    card.get_by_label("more").click()
    card.get_by_label("more").click()
    # Right after a stock poll (the next is 2 s away) the price changes: the page still quotes 120.
    with page.expect_response(lambda r: "/api/v1/products" in r.url):
        pass
    Product.objects.filter(pk=tea.pk).update(price=150)
    with page.expect_response(lambda r: r.url.endswith("/api/v1/orders") and r.request.method == "POST") as refused:
        page.click("#place")
    page.wait_for_selector("#catalog:not([hidden]) #order-error:not(:empty)")
    page.screenshot(path=SHOTS / "live-2-price-changed.png", full_page=True)

    assert refused.value.status == 409
    assert page.inner_text("#order-error") == (
        "Green tea now costs 150 (was 120). Please check the new total and place the order again. "
        "Nothing was reserved or charged."
    )
    assert card.locator("[data-price]").inner_text() == "150" and page.inner_text("#total") == "300"
    with page.expect_response(lambda r: r.url.endswith("/api/v1/orders") and r.request.method == "POST") as placed:
        page.click("#place")
    assert placed.value.status == 202  # the new price, accepted (no settler: it stays unpaid)
    assert Order.objects.get(user=user).total_amount == 300
    assert [e for e in page.console_errors if "status of 409" not in e] == []


def test_an_order_over_the_rate_limit_is_explained_and_the_basket_waits(page, live_server, settings):
    settings.ORDER_RATE_LIMIT_PER_USER, settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 1, 600
    user = make_user(balance=10_000)
    tea = make_product(name="Green tea", price=120, stock_quantity=50)
    _sign_in(page, live_server, user, "limited")
    assert client_for(user).post("/api/v1/orders", order_body(user, (tea, 1)), format="json").status_code == 201

    page.locator(f".product[data-product-id='{tea.id}']").get_by_label("more").click()
    page.click("#place")
    page.wait_for_selector("#catalog:not([hidden]) #order-error:not(:empty)")
    page.screenshot(path=SHOTS / "limited-2-rate-limited.png", full_page=True)

    message = page.inner_text("#order-error")
    assert re.fullmatch(
        r"You are ordering faster than the shop allows\. Please wait \d+ seconds and place the order again\. "
        r"Nothing was reserved or charged\.",
        message,
    ), message
    assert page.locator("#place").is_disabled()  # until the Retry-After has passed
    assert Order.objects.filter(user=user).count() == 1
    assert redis_counts.available(product_ids=[tea.id]) == {tea.id: 49}

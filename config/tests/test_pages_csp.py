"""The Content-Security-Policy of every page, and the pages still working under it, in a real
headless Chromium against a live server: the admin (its change page and the stock adjustment
form) and the API docs (Swagger UI and Redoc) load with no policy violation in the console."""

from __future__ import annotations

import pytest

from devtools.browser import chromium_page
from devtools.testing import make_product, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def page():
    with chromium_page() as page:
        yield page


def test_the_json_api_gets_a_policy_that_allows_nothing(client):
    response = client.get("/api/v1/no-such-thing")
    directives = set(response.headers["Content-Security-Policy"].split("; "))
    assert directives == {"default-src 'none'", "frame-ancestors 'none'"}


def test_the_admin_works_under_its_policy(page, live_server):
    boss = make_user(username="boss")
    boss.is_staff = boss.is_superuser = True
    boss.set_password("a-long-admin-password")
    boss.save()
    product = make_product(name="Green tea")

    login = page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    policy = login.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe-inline" not in policy
    page.fill("#id_username", "boss")
    page.fill("#id_password", "a-long-admin-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")

    change = page.goto(f"{live_server.url}/admin/inventory/product/{product.id}/change/")
    assert change.status == 200 and "content-security-policy" in change.headers
    assert page.input_value("#id_name") == "Green tea"
    # The admin's own scripts ran (they are static files, allowed by 'self').
    assert page.evaluate("typeof django === 'object' && typeof django.jQuery") == "function"
    page.click("text=Restock / adjust")
    page.wait_for_selector("form input[type=submit]")
    assert page.console_errors == []


def test_the_api_docs_render_under_their_policy(page, live_server):
    docs = page.goto(f"{live_server.url}/api/docs")
    assert "content-security-policy" in docs.headers
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Flash-sale order service" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path")  # the schema was fetched and drawn
    assert page.console_errors == []

    redoc = page.goto(f"{live_server.url}/api/redoc")
    assert "content-security-policy" in redoc.headers
    page.wait_for_selector("h1:has-text('Flash-sale order service')")
    page.wait_for_selector("text='/api/v1/orders'")
    # Redoc's "API docs by Redocly" badge is an image from its CDN: blocked, and nothing else.
    assert [e for e in page.console_errors if "https://cdn.redoc.ly/" not in e] == []

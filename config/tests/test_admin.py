"""The admin: every page renders, and stock and money change only through services."""

import pytest
from django.test import Client

from accounts.models import Account, User
from accounts.selectors import ledger_balance
from config.testing import client_for, make_product, make_user, order_body
from coupons.models import Coupon
from inventory import stock
from inventory.services import on_hand_by_product
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client():
    User.objects.create_superuser(id=1_000_000, username="admin", password="pw")
    client = Client()
    client.login(username="admin", password="pw")
    return client


def test_every_admin_list_and_detail_page_renders(admin_client):
    user = make_user(balance=500)
    product = make_product(price=10, stock_quantity=9)
    Coupon.objects.create(code="C", kind=Coupon.Kind.FIXED, value=1)
    client_for(user).post("/api/v1/orders", order_body(user, (product, 2)), format="json")
    order = Order.objects.get()

    pages = [
        "/admin/",
        "/admin/inventory/product/",
        f"/admin/inventory/product/{product.id}/change/",
        f"/admin/inventory/product/{product.id}/adjust/",
        "/admin/inventory/stockmovement/",
        "/admin/accounts/account/",
        f"/admin/accounts/account/{user.id}/change/",
        f"/admin/accounts/account/{user.id}/adjust/",
        "/admin/accounts/balanceentry/",
        "/admin/orders/order/",
        f"/admin/orders/order/{order.id}/change/",
        "/admin/payments/payment/",
        "/admin/coupons/coupon/",
        "/admin/coupons/coupon/add/",
    ]
    for page in pages:
        assert admin_client.get(page).status_code == 200, page
    listing = admin_client.get("/admin/inventory/product/").content.decode()
    assert "Available (Redis, live)" in listing and "Stock (database)" in listing


def test_admin_restock_writes_the_ledger_and_redis(admin_client):
    product = make_product(price=10, stock_quantity=5)
    response = admin_client.post(f"/admin/inventory/product/{product.id}/adjust/", {"amount": 7, "reason": "delivery"})

    assert response.status_code == 302
    assert on_hand_by_product()[product.id] == 12
    assert stock.available(product_ids=[product.id]) == {product.id: 12}


def test_admin_cannot_take_more_stock_than_is_available(admin_client):
    product = make_product(price=10, stock_quantity=5)
    response = admin_client.post(f"/admin/inventory/product/{product.id}/adjust/", {"amount": -6, "reason": "x"})

    assert response.status_code == 200 and b"OUT_OF_STOCK" in response.content
    assert on_hand_by_product()[product.id] == 5


def test_admin_top_up_goes_through_the_ledger(admin_client):
    user = make_user(balance=100)
    admin_client.post(f"/admin/accounts/account/{user.id}/adjust/", {"amount": 50, "reason": "goodwill"})
    admin_client.post(f"/admin/accounts/account/{user.id}/adjust/", {"amount": -500, "reason": "too much"})

    assert Account.objects.get(user=user).balance == 150 == ledger_balance(user_id=user.id)

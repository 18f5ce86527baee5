"""The admin: every page renders, and stock and money change only through services."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from accounts.models import Account, BalanceEntry, User
from accounts.selectors import ledger_balance
from coupons.models import Coupon
from devtools.testing import client_for, make_product, make_user, order_body
from inventory import redis_counts
from inventory.models import StockMovement
from inventory.reconciliation import on_hand_by_product
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


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
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 12}


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


def _staff_client(*permissions: str, groups: tuple[str, ...] = ()) -> Client:
    """A staff login holding exactly `permissions` ("app_label.codename") and `groups`."""
    staff = User.objects.create_user(username=f"staff{User.objects.count()}", password="pw", is_staff=True)
    for name in permissions:
        app_label, codename = name.split(".")
        staff.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    staff.groups.add(*Group.objects.filter(name__in=groups))
    client = Client()
    client.login(username=staff.username, password="pw")
    return client


def _money_and_stock(user, product) -> tuple:
    return (
        Account.objects.get(user=user).balance,
        BalanceEntry.objects.count(),
        on_hand_by_product()[product.id],
        StockMovement.objects.count(),
        redis_counts.available(product_ids=[product.id]),
    )


def test_staff_without_permissions_can_neither_open_nor_post_the_adjust_pages():
    user = make_user(balance=100)
    product = make_product(price=10, stock_quantity=5)
    before = _money_and_stock(user, product)
    # Every right except the two adjust ones: being allowed to edit is not being allowed to move.
    client = _staff_client("accounts.view_account", "accounts.change_account", "inventory.change_product")

    for url in (f"/admin/accounts/account/{user.id}/adjust/", f"/admin/inventory/product/{product.id}/adjust/"):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"amount": 1_000, "reason": "mine"}).status_code == 403, url
    assert _money_and_stock(user, product) == before
    assert b"Top up / adjust" not in client.get(f"/admin/accounts/account/{user.id}/change/").content
    assert b"Restock / adjust" not in client.get("/admin/inventory/product/").content


def test_staff_without_view_permission_sees_no_ledger_account_or_order():
    user = make_user(balance=100)
    product = make_product(price=10, stock_quantity=5)
    client_for(user).post("/api/v1/orders", order_body(user, (product, 1)), format="json")
    order = Order.objects.get()
    client = _staff_client()

    for url in (
        "/admin/accounts/account/",
        f"/admin/accounts/account/{user.id}/change/",
        "/admin/accounts/balanceentry/",
        "/admin/inventory/stockmovement/",
        "/admin/orders/order/",
        f"/admin/orders/order/{order.id}/change/",
    ):
        assert client.get(url).status_code == 403, url
    index = client.get("/admin/").content
    assert b"Balance entries" not in index and b"Orders" not in index


def test_the_adjust_permission_lets_money_and_stock_move_through_the_ledgers():
    user = make_user(balance=100)
    product = make_product(price=10, stock_quantity=5)
    money = _staff_client("accounts.view_account", "accounts.adjust_balance", "inventory.view_product")
    goods = _staff_client("inventory.view_product", "inventory.adjust_stock")
    assert (
        money.post(f"/admin/accounts/account/{user.id}/adjust/", {"amount": 50, "reason": "goodwill"}).status_code
        == 302
    )
    assert (
        goods.post(f"/admin/inventory/product/{product.id}/adjust/", {"amount": 7, "reason": "delivery"}).status_code
        == 302
    )

    assert Account.objects.get(user=user).balance == 150 == ledger_balance(user_id=user.id)
    # The row names the staff member who made it (issue 19: it said only "admin: goodwill").
    assert BalanceEntry.objects.filter(
        account_id=user.id, reference__regex=r"^admin:staff\d+ \(id \d+\): goodwill$", amount=50
    ).exists()
    assert on_hand_by_product()[product.id] == 12 and redis_counts.available(product_ids=[product.id]) == {
        product.id: 12
    }
    assert StockMovement.objects.filter(product=product, reason="delivery", quantity=7).exists()
    assert b"Top up / adjust" in money.get("/admin/accounts/account/").content
    assert b"Restock / adjust" in goods.get("/admin/inventory/product/").content
    # one right is not the other
    assert money.post(f"/admin/inventory/product/{product.id}/adjust/", {"amount": 1, "reason": "x"}).status_code == 403
    assert goods.post(f"/admin/accounts/account/{user.id}/adjust/", {"amount": 1, "reason": "x"}).status_code == 403
    assert on_hand_by_product()[product.id] == 12 and Account.objects.get(user=user).balance == 150


# Not transactional: the groups come from a migration, and a transactional test's flush
# removes them (pytest-django runs these tests before the transactional ones).
@pytest.mark.django_db
def test_the_operator_groups_from_the_migration_grant_one_adjust_page_each():
    user = make_user(balance=100)
    product = make_product(price=10, stock_quantity=5)
    sale = _staff_client(groups=("Sale operators",))
    balance = _staff_client(groups=("Balance operators",))
    account_page, product_page = (
        f"/admin/accounts/account/{user.id}/adjust/",
        f"/admin/inventory/product/{product.id}/adjust/",
    )

    assert (sale.get(product_page).status_code, sale.get(account_page).status_code) == (200, 403)
    assert (balance.get(account_page).status_code, balance.get(product_page).status_code) == (200, 403)
    assert sale.get("/admin/inventory/stockmovement/").status_code == 200
    assert sale.get("/admin/accounts/balanceentry/").status_code == 403
    assert balance.get("/admin/accounts/balanceentry/").status_code == 200


def test_a_purchase_limit_saved_in_the_admin_is_what_orders_are_checked_against(admin_client):
    product = make_product(price=3, stock_quantity=10)
    form = {"name": product.name, "price": 3, "active": "on", "purchase_limit": 2}
    assert admin_client.post(f"/admin/inventory/product/{product.id}/change/", form).status_code == 302
    assert redis_counts.redis_client().get(redis_counts.limit_key(product.id)) == b"2"
    buyer = make_user(balance=100)
    answer = client_for(buyer).post("/api/v1/orders", order_body(buyer, (product, 3)), format="json")
    assert answer.json()["error"]["code"] == "PURCHASE_LIMIT_REACHED"
    assert (
        admin_client.post(f"/admin/inventory/product/{product.id}/change/", {**form, "purchase_limit": ""}).status_code
        == 302
    )
    assert redis_counts.redis_client().get(redis_counts.limit_key(product.id)) is None
    assert client_for(buyer).post("/api/v1/orders", order_body(buyer, (product, 3)), format="json").status_code == 201


def test_the_order_search_finds_an_order_by_number_and_a_customers_orders_by_exact_username(admin_client):
    product = make_product(price=1, stock_quantity=20)
    alice, bob = make_user(username="alice", balance=100), make_user(username="bob", balance=100)
    orders = {}
    for user in (alice, alice, bob):
        answer = client_for(user).post("/api/v1/orders", order_body(user, (product, 1)), format="json")
        orders.setdefault(user.username, []).append(answer.json()["orderId"])

    def found(term: str) -> list[int]:
        response = admin_client.get("/admin/orders/order/", {"q": term})
        assert response.status_code == 200
        return sorted(order.id for order in response.context_data["cl"].result_list)

    assert found("alice") == sorted(orders["alice"])
    assert found(str(orders["bob"][0])) == orders["bob"]
    assert found("ali") == [] and found("99999999999999999999") == []


def test_the_product_list_shows_each_products_own_ledger_stock(admin_client):
    sold, untouched = make_product(price=1, stock_quantity=12), make_product(price=1, stock_quantity=7)
    user = make_user(balance=100)
    assert client_for(user).post("/api/v1/orders", order_body(user, (sold, 5)), format="json").status_code == 201

    response = admin_client.get("/admin/inventory/product/")

    shown = {product.id: product.on_hand for product in response.context_data["cl"].result_list}
    assert shown == {sold.id: 7, untouched.id: 7}

"""Admin changes of money and stock name their admin and are bounded."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from accounts.models import Account, BalanceEntry, User
from accounts.selectors import ledger_balance
from devtools.testing import make_product, make_staff, make_user
from inventory import redis_counts
from inventory.errors import StockTotalTooLarge
from inventory.models import Product, StockMovement
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.services import STOCK_TOTAL_MAX, stock_adjust

pytestmark = pytest.mark.django_db(transaction=True)

MONEY = ("accounts.view_account", "accounts.adjust_balance")
GOODS = ("inventory.view_product", "inventory.adjust_stock")


def staff(username: str, *permissions: str) -> tuple[User, Client]:
    """A staff user holding exactly `permissions`, and a client signed in as them."""
    user = make_staff(username=username, permissions=permissions)
    client = Client()
    client.force_login(user)
    return user, client


def history(model, object_id) -> list[tuple[int, str]]:
    """The admin's own history of one object: (admin user id, message) of each change."""
    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(model), object_id=str(object_id), action_flag=CHANGE
    ).order_by("id")
    return [(entry.user_id, entry.change_message) for entry in entries]


def account_adjust(client: Client, user_id: int, amount, reason: str = "goodwill"):
    return client.post(f"/admin/accounts/account/{user_id}/adjust/", {"amount": amount, "reason": reason})


def product_adjust(client: Client, product_id: int, amount, reason: str = "delivery"):
    return client.post(f"/admin/inventory/product/{product_id}/adjust/", {"amount": amount, "reason": reason})


# --- Who did it -------------------------------------------------------------------------------


@pytest.mark.parametrize("amount, kind", [(50, BalanceEntry.Kind.TOP_UP), (-30, BalanceEntry.Kind.ADJUSTMENT)])
def test_a_balance_change_names_its_admin_on_the_ledger_row_and_in_the_admin_history(amount, kind):
    customer = make_user(balance=100)
    alice, client = staff("alice", *MONEY)

    assert account_adjust(client, customer.id, amount).status_code == 302

    entry = BalanceEntry.objects.filter(account_id=customer.id).latest("id")
    assert (entry.amount, entry.kind) == (amount, kind)
    assert entry.reference == f"admin:alice (id {alice.id}): goodwill"
    assert history(Account, customer.id) == [
        (alice.id, f"Balance of user {customer.id} changed by {amount:+d}. Reason: goodwill")
    ]


@pytest.mark.parametrize("amount", [7, -2])
def test_a_stock_change_names_its_admin_on_the_ledger_row_and_in_the_admin_history(amount):
    product = make_product(stock_quantity=5)
    bob, client = staff("bob", *GOODS)

    assert product_adjust(client, product.id, amount).status_code == 302

    movement = StockMovement.objects.filter(product=product).latest("id")
    assert (movement.quantity, movement.reason) == (amount, "delivery")
    assert movement.reference == f"admin:bob (id {bob.id})"
    assert history(Product, product.id) == [(bob.id, f"Stock of {product} changed by {amount:+d}. Reason: delivery")]
    assert (
        on_hand_by_product()[product.id] == 5 + amount == redis_counts.available(product_ids=[product.id])[product.id]
    )


# --- Bounded ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page, amount",
    [
        ("account", 10**19),  # past bigint: answered 500 before
        ("account", -(10**19)),
        ("account", 1_000_001),  # past the configured maximum
        ("account", -1_000_001),
        ("product", 10**19),
        ("product", -(10**19)),
        ("product", 10_001),
        ("product", -10_001),
    ],
)
def test_an_adjustment_past_the_configured_maximum_is_a_form_error_and_changes_nothing(page, amount, settings):
    settings.ADMIN_BALANCE_ADJUST_MAX = 1_000_000
    settings.ADMIN_STOCK_ADJUST_MAX = 10_000
    customer = make_user(balance=100)
    product = make_product(stock_quantity=5)
    _, client = staff("carol", *MONEY, *GOODS)
    setting = "ADMIN_BALANCE_ADJUST_MAX" if page == "account" else "ADMIN_STOCK_ADJUST_MAX"
    maximum = settings.ADMIN_BALANCE_ADJUST_MAX if page == "account" else settings.ADMIN_STOCK_ADJUST_MAX

    adjust = account_adjust if page == "account" else product_adjust
    response = adjust(client, customer.id if page == "account" else product.id, amount)

    assert response.status_code == 200
    assert response.context["form"].errors["amount"] == [f"At most {maximum:,} either way in one change ({setting})."]
    assert Account.objects.get(user=customer).balance == 100 == ledger_balance(user_id=customer.id)
    assert on_hand_by_product()[product.id] == 5 == redis_counts.available(product_ids=[product.id])[product.id]
    assert not LogEntry.objects.exists()


def test_stock_never_grows_past_what_redis_and_its_scripts_count_exactly_and_reconciliation_keeps_working(settings):
    """Redis's counter overflows past 2**63 - 1 (INCRBY refuses, after the ledger row committed)
    and its Lua scripts count in doubles, exact only to 2**53: a drift past that broke every
    reconciliation's repair. Even with the per-change maximum lifted, no total goes past
    STOCK_TOTAL_MAX."""
    settings.ADMIN_STOCK_ADJUST_MAX = 10**19
    product = make_product(stock_quantity=5)
    _, client = staff("dave", *GOODS)

    answers = [product_adjust(client, product.id, 4 * 10**18) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert "STOCK_TOTAL_TOO_LARGE" in answers[0].content.decode()
    assert on_hand_by_product()[product.id] == 5 == redis_counts.available(product_ids=[product.id])[product.id]
    report = inventory_reconcile()
    assert report.repaired and not report.drifted


def test_stock_may_reach_the_total_maximum_and_not_one_unit_past_it():
    product = make_product(stock_quantity=5)

    with pytest.raises(StockTotalTooLarge):
        stock_adjust(product=product, quantity=STOCK_TOTAL_MAX - 4, reason="too many")
    stock_adjust(product=product, quantity=STOCK_TOTAL_MAX - 5, reason="exactly the maximum")
    with pytest.raises(StockTotalTooLarge):
        stock_adjust(product=product, quantity=1, reason="one more")

    assert (
        on_hand_by_product()[product.id]
        == STOCK_TOTAL_MAX
        == redis_counts.available(product_ids=[product.id])[product.id]
    )
    assert not inventory_reconcile().drifted

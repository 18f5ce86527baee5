"""Reset PostgreSQL and Redis to a known load-test state (the seed report's data by default)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import connection, transaction
from django_redis import get_redis_connection

from accounts.models import Account, BalanceEntry, User
from accounts.services import token_create_many, token_map_clear_all
from coupons.models import Coupon
from inventory import redis_counts
from inventory.models import Product, StockMovement
from inventory.reconciliation import inventory_reconcile
from kernel.private_files import private_file_write
from loadtest.history import History, HistoryRefused, history_vacuum, history_write

# Tests seed too: they write their tokens elsewhere, never over the development server's.
TOKENS_PATH = Path(settings.LOADTEST_TOKENS_PATH)

# Four minutes at 1,000 orders/s, 2 items of 3 units on average, spread over 5 products,
# with room to spare: a load run never sells out unless asked to.
DEFAULT_STOCK = 1_000_000
DEFAULT_BALANCE = 1_000_000

_RESET_TABLES = [
    "orders_idempotencyrecord",
    "orders_intakegeneration",
    "orders_orderitem",
    "orders_order",
    "payments_refund",
    "payments_payment",
    "coupons_couponredemption",
    "coupons_coupon",
    "inventory_stockreservation",
    "inventory_pendingmove",
    "inventory_stockmovement",
    "inventory_product",
    "accounts_balanceentry",
    "accounts_apitoken",
    "accounts_account",
]


# Seeded customers are users 1..N (the seed's k6 script picks user ids in that range), below
# CUSTOMER_ID_LIMIT; the limit itself is the admin `make run` creates (devtools/serve.py's
# ADMIN_USER_ID), and ids above it are everyone else's (staff, accounts made in the admin or by
# the API), so reseeding any shape never meets one of them.
CUSTOMER_ID_LIMIT = 1_000_000


class SeedRefused(Exception):
    """Seeding would collide with data it must keep; nothing was changed."""


@dataclass(frozen=True)
class SeedShape:
    users: int = 500
    products: int = 5
    stock: int = DEFAULT_STOCK
    balance: int = DEFAULT_BALANCE
    price: int = 1
    orders: int = 0  # past orders (loadtest/history.py), spread over the last history_days
    history_days: float = 30.0


def seed(shape: SeedShape, *, progress: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """Replace customers, products, orders and stock with `shape`, and its past orders; staff
    users are kept.

    Returns (and writes to settings.LOADTEST_TOKENS_PATH: loadtest/tokens.json for `make run`, a
    load run's or the tests' own file otherwise) each customer's bearer token. Raises SeedRefused,
    with nothing changed, for a shape out of range or one that would replace a staff user.
    """
    _refuse_bad_shape(shape)
    with transaction.atomic():
        _refuse_staff_in_customer_range(shape)
        _clear_all_but_staff(progress)
        tokens = _create_customers(shape, progress)
        _create_products(shape, progress)
        if shape.orders:
            _write_past_orders(shape, progress)
        Coupon.objects.create(code="WELCOME10", kind=Coupon.Kind.PERCENT, value=10, max_discount=500)
        _move_id_sequences_past_the_seed()
    if shape.orders:
        history_vacuum(progress=progress)
    _load_stock_into_redis(progress)
    # Bearer tokens: private from the first byte, replacing the last seed's file whole (and the
    # directory made if missing: .data/ is not there with both servers configured)
    private_file_write(TOKENS_PATH, json.dumps(tokens))
    progress(f"wrote {len(tokens)} tokens to {TOKENS_PATH}")
    return tokens


def _refuse_bad_shape(shape: SeedShape) -> None:
    """Customers are users 1..N below CUSTOMER_ID_LIMIT; past orders are none or more, over a
    positive number of days."""
    if not 1 <= shape.users < CUSTOMER_ID_LIMIT:
        raise SeedRefused(f"--users must be between 1 and {CUSTOMER_ID_LIMIT - 1}")
    if shape.orders < 0 or shape.history_days <= 0:
        raise SeedRefused("--orders must be 0 or more, over a positive number of --history-days")


def _refuse_staff_in_customer_range(shape: SeedShape) -> None:
    """A staff user is kept, so none may have an id the seed gives a customer."""
    in_the_way = list(
        User.objects.filter(is_staff=True, id__lte=shape.users).order_by("id").values_list("id", "username")
    )
    if in_the_way:
        named = ", ".join(f"{name!r} (id {uid})" for uid, name in in_the_way[:5])
        raise SeedRefused(
            f"staff user(s) {named} have ids inside the customer range 1..{shape.users}, which seeding "
            f"replaces; seed fewer users, or give them ids of {CUSTOMER_ID_LIMIT} and up"
        )


def _clear_all_but_staff(progress: Callable[[str], None]) -> None:
    """Every table the seed fills starts empty with its ids from 1; every user but staff goes."""
    progress("clearing orders, payments, coupons, stock and customers")
    token_map_clear_all()  # every token goes, and the new customers get the old user ids
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(_RESET_TABLES)} RESTART IDENTITY CASCADE")
        # The old products' price mirror goes before the new ones commit under the same ids
        # (orders meanwhile take the database's path); TRUNCATE's lock keeps reconciliation from
        # writing it again until then; its load after the commit writes the new prices (a refused
        # seed leaves them absent until the next reconciliation).
        redis_counts.prices_forget_all()
        # Set-based: delete() of 100k users binds more parameters than PostgreSQL takes. The
        # truncated tables held the other rows that point at customers.
        customers = f"SELECT id FROM {User._meta.db_table} WHERE NOT is_staff"
        for table in (User.groups.through, User.user_permissions.through, LogEntry):
            cursor.execute(f"DELETE FROM {table._meta.db_table} WHERE user_id IN ({customers})")
        cursor.execute(f"DELETE FROM {User._meta.db_table} WHERE NOT is_staff")


def _create_customers(shape: SeedShape, progress: Callable[[str], None]) -> dict[str, str]:
    """Users 1..N, each with an account whose balance is one top-up in the ledger, and a bearer
    token; returns the tokens by user id (the database keeps only their hashes)."""
    progress(f"creating {shape.users} users with a balance of {shape.balance}")
    users = User.objects.bulk_create(User(id=i, username=f"user{i}", password="!") for i in range(1, shape.users + 1))
    Account.objects.bulk_create(Account(user=u, balance=shape.balance) for u in users)
    BalanceEntry.objects.bulk_create(
        BalanceEntry(account_id=u.id, amount=shape.balance, kind=BalanceEntry.Kind.TOP_UP,
                     reference="seed", balance_after=shape.balance)
        for u in users
    )  # fmt: skip
    # The database keeps the tokens' hashes; the tokens themselves go to the file only.
    return {str(uid): key for uid, key in token_create_many(user_ids=[u.id for u in users]).items()}


def _create_products(shape: SeedShape, progress: Callable[[str], None]) -> None:
    """Products 1..N at one price, each stocked by one restock in the stock ledger."""
    progress(f"creating {shape.products} products at price {shape.price} with {shape.stock} units each")
    Product.objects.bulk_create(
        Product(id=i, name=f"Product {i}", price=shape.price) for i in range(1, shape.products + 1)
    )
    StockMovement.objects.bulk_create(
        StockMovement(product_id=i, quantity=shape.stock, kind=StockMovement.Kind.RESTOCK, reason="seed")
        for i in range(1, shape.products + 1)
    )


def _write_past_orders(shape: SeedShape, progress: Callable[[str], None]) -> None:
    """The shape's past orders (loadtest/history.py); a history the shape cannot carry is refused."""
    progress(f"writing {shape.orders:,} past orders over the last {shape.history_days:g} days")
    try:
        history_write(History(shape.orders, shape.history_days), users=shape.users,
                      products=shape.products, progress=progress)  # fmt: skip
    except HistoryRefused as refused:
        raise SeedRefused(str(refused)) from refused


def _move_id_sequences_past_the_seed() -> None:
    """New users get ids past every id in use, past the admin's and the customers' range;
    products are all seeded, so theirs go on after the last."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{User._meta.db_table}', 'id'), "
            f"GREATEST((SELECT MAX(id) FROM {User._meta.db_table}), %s))",
            [CUSTOMER_ID_LIMIT],
        )
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{Product._meta.db_table}', 'id'), "
            f"GREATEST((SELECT MAX(id) FROM {Product._meta.db_table}), 1))"
        )


def _load_stock_into_redis(progress: Callable[[str], None]) -> None:
    """Redis's stock counts (inv:*) start again from the stock ledger just written: the last
    seed's keys are deleted, and reconciliation repairs the missing counts from the ledger. The
    intake's keys (ord:*) go too: the orders' id sequence restarted with the TRUNCATE, so a block
    of ids left from the last seed would be handed out again."""
    progress("loading stock into Redis")
    for client, pattern in ((redis_counts.redis_client(), "inv:*"), (get_redis_connection("default"), "ord:*")):
        keys = list(client.scan_iter(pattern, count=1000))
        pipe = client.pipeline(transaction=False)  # a key per DEL: on a cluster the keys are in many slots
        for key in keys:
            pipe.delete(key)
        pipe.execute()
    inventory_reconcile()


def database_is_empty() -> bool:
    return not Product.objects.exists()

"""What must hold after a load run, checked in PostgreSQL and Redis directly.

The starting state comes from the seed shape, recorded before the run, never from the run:
- stock: for every product, starting stock = on hand now + units sold (items of orders not
  cancelled), on hand is never below zero, and a sellout leaves exactly zero;
- money: for every user, starting balance = balance now + payments - refunds, and the balance
  equals the sum of its ledger entries;
- orders: every 201 answer k6 counted is one order in the database, and every paid order holds
  a captured payment of its paid amount;
- Redis: reconciliation runs first and must find no drift from the ledger, nothing in flight
  and nothing abandoned; afterwards the available counts equal the database record.

The checks only read (reconciliation may repair Redis, as it would in production); a failed
check names the first few offenders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db.models import Count, Exists, F, OuterRef, Q, Sum

from accounts.models import Account, BalanceEntry
from inventory import redis_counts
from inventory.reconciliation import ReconcileReport, inventory_reconcile, on_hand_by_product
from loadtest.seeding import SeedShape
from orders.models import Order, OrderItem, OrderStatus
from payments.models import Payment, Refund

SHOWN = 5  # offenders named in a failed check


@dataclass(frozen=True)
class Baseline:
    """Stock per product and balance per user when seeded, and the past orders seeded with them."""

    stock: dict[int, int]
    balances: dict[int, int]
    orders: int = 0

    @classmethod
    def from_shape(cls, shape: SeedShape) -> Baseline:
        return cls(
            stock={pid: shape.stock for pid in range(1, shape.products + 1)},
            balances={uid: shape.balance for uid in range(1, shape.users + 1)},
            orders=shape.orders,
        )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _check(name: str, problems: list[str], total: int | None, what: str, passed: str) -> Check:
    """Held (with `passed` as its detail) when there are no problems; else "3 of 500 users differ: ..."."""
    if not problems:
        return Check(name, True, passed)
    shown = "; ".join(problems[:SHOWN]) + (" ..." if len(problems) > SHOWN else "")
    of_total = f" of {total}" if total is not None else ""
    return Check(name, False, f"{len(problems)}{of_total} {what}: {shown}")


def _sums(queryset, key: str, value: str) -> dict[int, int]:
    return {k: v or 0 for k, v in queryset.order_by().values(key).annotate(total=Sum(value)).values_list(key, "total")}


def stock_conserved(baseline: Baseline, on_hand: dict[int, int]) -> Check:
    sold = _sums(OrderItem.objects.exclude(order__status=OrderStatus.CANCELLED), "product_id", "quantity")
    products = sorted(baseline.stock.keys() | on_hand.keys() | sold.keys())
    problems = [
        f"product {pid}: start {baseline.stock.get(pid, 0)} != on hand {on_hand.get(pid, 0)} + sold {sold.get(pid, 0)}"
        for pid in products
        if baseline.stock.get(pid, 0) != on_hand.get(pid, 0) + sold.get(pid, 0)
    ]
    units = sum(sold.values())
    return _check("stock conserved", problems, len(products), "products differ", f"{units} units sold, none lost")


def no_oversell(on_hand: dict[int, int]) -> Check:
    problems = [f"product {pid}: on hand {units}" for pid, units in on_hand.items() if units < 0]
    return _check("no oversell", problems, len(on_hand), "products below zero", "no product below zero")


def sold_out(on_hand: dict[int, int]) -> Check:
    problems = [f"product {pid}: {units} left" for pid, units in on_hand.items() if units != 0]
    return _check("sold out exactly", problems, len(on_hand), "products not at zero", "every unit sold, not one more")


def money_conserved(baseline: Baseline) -> Check:
    balances = dict(Account.objects.values_list("user_id", "balance"))
    paid = _sums(Payment.objects.all(), "user_id", "amount")
    refunded = _sums(Refund.objects.all(), "payment__user_id", "amount")
    users = sorted(baseline.balances.keys() | balances.keys())

    def now(uid: int) -> int:
        return balances.get(uid, 0) + paid.get(uid, 0) - refunded.get(uid, 0)

    problems = [
        f"user {uid}: start {baseline.balances.get(uid, 0)} != balance {balances.get(uid, 0)}"
        f" + paid {paid.get(uid, 0)} - refunded {refunded.get(uid, 0)}"
        for uid in users
        if baseline.balances.get(uid, 0) != now(uid)
    ]
    total = sum(paid.values()) - sum(refunded.values())
    return _check("money conserved", problems, len(users), "users differ", f"{total} paid in total, none lost")


def balances_match_ledger() -> Check:
    ledger = _sums(BalanceEntry.objects.all(), "account_id", "amount")
    balances = dict(Account.objects.values_list("user_id", "balance"))
    problems = [
        f"user {uid}: balance {balance} != ledger {ledger.get(uid, 0)}"
        for uid, balance in sorted(balances.items())
        if balance != ledger.get(uid, 0)
    ]
    return _check("balances match ledger", problems, len(balances), "accounts differ", "every balance = its entries")


def paid_orders_have_payments() -> Check:
    captured = Payment.objects.filter(
        order_id=OuterRef("pk"), status=Payment.Status.CAPTURED, amount=OuterRef("paid_amount")
    )
    paid = Order.objects.filter(status=OrderStatus.PAID)
    bad = paid.filter(~Exists(captured) | ~Q(paid_amount=F("total_amount") - F("discount_amount")))
    count = bad.count()
    if not count:
        return Check("paid orders have payments", True, "each paid order holds a captured payment of its amount")
    shown = ", ".join(str(pk) for pk in bad.order_by("pk").values_list("pk", flat=True)[:SHOWN])
    return Check(
        "paid orders have payments", False, f"{count} of {paid.count()} paid orders lack their payment: orders {shown}"
    )


def orders_match_answers(answered: int, *, past: int = 0) -> Check:
    """The orders placed since the seed, past the `past` ones it wrote (ids 1..past), against the answers."""
    placed = Order.objects.filter(id__gt=past)
    by_status = dict(placed.order_by().values("status").annotate(n=Count("id")).values_list("status", "n"))
    total = sum(by_status.values())
    statuses = ", ".join(f"{status} {n}" for status, n in sorted(by_status.items())) or "none"
    kept = Order.objects.filter(id__lte=past).count() if past else 0
    seeded = f", besides {kept} of {past} seeded past orders" if past else ""
    detail = f"{total} orders in the database ({statuses}){seeded}, {answered} answers 201/202"
    return Check("orders match 201 answers", total == answered and kept == past, detail)


def redis_matches_db(report: ReconcileReport, on_hand: dict[int, int]) -> Check:
    problems = []
    if report.rebuilt:
        problems.append("Redis had lost its stock and was rebuilt from the database")
    if on_hand and not report.products:
        problems.append("reconciliation was skipped: another reconciler held the lock")
    for product in report.products:
        if product.redis is None or product.drift:
            problems.append(f"product {product.product_id}: redis {product.redis} != expected {product.expected}")
        if product.in_flight:
            problems.append(f"product {product.product_id}: {product.in_flight} units still reserved in flight")
    if report.released_tokens:
        problems.append(f"{len(report.released_tokens)} abandoned reservations had to be released")
    after = redis_counts.available(product_ids=list(on_hand))
    problems += [
        f"product {pid}: redis {after[pid]} != on hand {units} after reconciliation"
        for pid, units in on_hand.items()
        if after[pid] != units
    ]
    return _check("redis matches database", problems, None, "problems", "no drift, nothing in flight")


def _reconcile(*, expect_products: bool, attempts: int = 10) -> ReconcileReport:
    """Reconcile; an empty report means another reconciler (a periodic job) held the lock: retry."""
    report = inventory_reconcile()
    for _ in range(attempts - 1):
        if report.products or not expect_products:
            break
        time.sleep(0.5)
        report = inventory_reconcile()
    return report


def check_invariants(
    *, baseline: Baseline, orders_answered: int | None, sold_out_expected: bool = False
) -> list[Check]:
    """Run every check; `orders_answered` is k6's count of 201s (None: not compared)."""
    reconciled = _reconcile(expect_products=bool(baseline.stock))
    on_hand = on_hand_by_product()
    checks = [
        stock_conserved(baseline, on_hand),
        no_oversell(on_hand),
        money_conserved(baseline),
        balances_match_ledger(),
        paid_orders_have_payments(),
        redis_matches_db(reconciled, on_hand),
    ]
    if sold_out_expected:
        checks.append(sold_out(on_hand))
    if orders_answered is not None:
        checks.append(orders_match_answers(orders_answered, past=baseline.orders))
    return checks

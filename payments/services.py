"""Payments from the balance, and refunds: accounts' optimistic lock does the money moving."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from django.db import transaction

from accounts.services import Withdrawal, WithdrawalOutcome, account_refund, account_withdraw, account_withdraw_many
from kernel.database import sql_execute, sql_one
from payments.models import Payment, Refund
from payments.queries import INSERT_PAYMENT, INSERT_PAYMENTS, NewPayments
from payments.references import order_reference


def payment_take(*, order_id: int, user_id: int, amount: int, max_attempts: int | None = None) -> int:
    """Charge `amount` for `order_id` from the user's balance, in the caller's transaction.
    Returns the payment's id.

    The unique `order_id` makes a second charge for the same order fail, and the balance change
    and the payment row commit together. Raises InsufficientBalance or BalanceConflict.
    """
    with transaction.atomic(savepoint=False):
        (payment_id,) = sql_one(INSERT_PAYMENT.text, [order_id, user_id, amount, Payment.Status.CAPTURED])
        if amount:
            account_withdraw(
                user_id=user_id, amount=amount, reference=order_reference(order_id), max_attempts=max_attempts
            )
        return payment_id


@dataclass(frozen=True, slots=True)
class Charge:
    order_id: int
    user_id: int
    amount: int


def payment_take_many(*, charges: list[Charge]) -> list[WithdrawalOutcome]:
    """Charge many orders in the caller's transaction; one outcome per charge, in order
    (TAKEN, SHORT, or CONFLICT: not charged, to be tried again).

    The balances move first (accounts' version check, retried per account), then one INSERT
    writes the payments of the charges TAKEN. The unique `order_id` makes a second charge
    for an order fail the whole transaction, so no order is ever charged twice.
    """
    to_withdraw = [c for c in charges if c.amount]
    results = (
        account_withdraw_many(
            withdrawals=[Withdrawal(c.user_id, c.amount, order_reference(c.order_id)) for c in to_withdraw]
        )
        if to_withdraw
        else []
    )
    withdrawn = {charge.order_id: result for charge, result in zip(to_withdraw, results, strict=True)}
    outcomes = [withdrawn.get(c.order_id, WithdrawalOutcome.TAKEN) for c in charges]
    paid = [
        {"order_id": c.order_id, "user_id": c.user_id, "amount": c.amount}
        for c, outcome in zip(charges, outcomes, strict=True)
        if outcome == WithdrawalOutcome.TAKEN
    ]
    if paid:
        charges = NewPayments(charges=orjson.dumps(paid).decode(), status=Payment.Status.CAPTURED)
        sql_execute(INSERT_PAYMENTS.text, INSERT_PAYMENTS.bind(charges))
    return outcomes


def payment_refund(*, order_id: int) -> Refund | None:
    """Give an order's payment back to the balance. Idempotent: a refunded payment is skipped."""
    with transaction.atomic(savepoint=False):
        payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
        if payment is None or payment.status == Payment.Status.REFUNDED:
            return None
        Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.REFUNDED)
        if payment.amount:
            account_refund(user_id=payment.user_id, amount=payment.amount, reference=order_reference(order_id))
        return Refund.objects.create(payment=payment, amount=payment.amount)

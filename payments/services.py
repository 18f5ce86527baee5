"""Payments from the balance, and refunds: accounts' optimistic lock does the money moving."""

from __future__ import annotations

from django.db import transaction

from accounts.services import account_refund, account_withdraw
from config.database import sql_one
from payments.models import Payment, Refund

_INSERT_PAYMENT_SQL = (
    "INSERT INTO payments_payment (order_id, user_id, amount, status, created_at) "
    "VALUES (%s, %s, %s, %s, now()) RETURNING id"
)


def payment_take(*, order_id: int, user_id: int, amount: int, max_attempts: int | None = None) -> int:
    """Charge `amount` for `order_id` from the user's balance, in the caller's transaction.
    Returns the payment's id.

    The unique `order_id` makes a second charge for the same order fail, and the balance change
    and the payment row commit together. Raises InsufficientBalance or BalanceConflict.
    """
    with transaction.atomic(savepoint=False):
        (payment_id,) = sql_one(_INSERT_PAYMENT_SQL, [order_id, user_id, amount, Payment.Status.CAPTURED])
        if amount:
            account_withdraw(user_id=user_id, amount=amount, reference=f"order:{order_id}", max_attempts=max_attempts)
        return payment_id


def payment_refund(*, order_id: int) -> Refund | None:
    """Give an order's payment back to the balance. Idempotent: a refunded payment is skipped."""
    with transaction.atomic(savepoint=False):
        payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
        if payment is None or payment.status == Payment.Status.REFUNDED:
            return None
        Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.REFUNDED)
        if payment.amount:
            account_refund(user_id=payment.user_id, amount=payment.amount, reference=f"order:{order_id}")
        return Refund.objects.create(payment=payment, amount=payment.amount)

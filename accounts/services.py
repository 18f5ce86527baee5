"""Balance changes: a version-column optimistic lock with bounded, jittered retry, and a ledger."""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.db import connection, transaction

from accounts.errors import BalanceConflict, InsufficientBalance
from accounts.models import Account, ApiToken, BalanceEntry, User
from config import metrics
from config.retry import Backoff, RetryExhausted, retry_on_conflict

logger = logging.getLogger(__name__)

_READ_SQL = "SELECT balance, version FROM accounts_account WHERE user_id = %s"
_UPDATE_SQL = (
    "UPDATE accounts_account SET balance = %s, version = version + 1, updated_at = now() "
    "WHERE user_id = %s AND version = %s"
)


def _balance_backoff(max_attempts: int | None = None) -> Backoff:
    return Backoff(
        max_attempts=max_attempts or settings.BALANCE_UPDATE_MAX_ATTEMPTS,
        base_ms=settings.BALANCE_UPDATE_BACKOFF_MS,
    )


def _count_conflict(user_id: int, attempt: int) -> None:
    metrics.count("balance_version_conflicts")
    logger.info("balance version conflict for user %s (attempt %s), retrying", user_id, attempt)


def account_change_balance(
    *,
    user_id: int,
    amount: int,
    kind: BalanceEntry.Kind,
    reference: str = "",
    max_attempts: int | None = None,
) -> BalanceEntry:
    """Add `amount` (negative to take money) to the user's balance and write its ledger entry.

    Safe because the UPDATE only matches the version we read: a concurrent change makes it
    match nothing, and we re-read and retry (bounded, jittered, counted). The ledger entry is
    written in the same transaction, so a crash leaves both or neither.

    Raises InsufficientBalance when the balance would go below zero, BalanceConflict when
    every attempt lost the race (`max_attempts=1` is the old design: no retry).
    """

    def attempt_once() -> int | None:
        with connection.cursor() as cursor:
            cursor.execute(_READ_SQL, [user_id])
            row = cursor.fetchone()
            if row is None:
                raise Account.DoesNotExist(f"user {user_id} has no account")
            balance, version = row
            new_balance = balance + amount
            if new_balance < 0:
                raise InsufficientBalance(details={"balance": balance, "required": -amount})
            cursor.execute(_UPDATE_SQL, [new_balance, user_id, version])
            return new_balance if cursor.rowcount == 1 else None

    with transaction.atomic(savepoint=False):
        try:
            balance_after = retry_on_conflict(
                attempt_once,
                backoff=_balance_backoff(max_attempts),
                on_conflict=lambda attempt: _count_conflict(user_id, attempt),
            )
        except RetryExhausted as exc:
            metrics.count("balance_conflict_failures")
            logger.warning("balance update for user %s gave up after %s attempts", user_id, exc.attempts)
            raise BalanceConflict(details={"attempts": exc.attempts}) from exc
        return BalanceEntry.objects.create(
            account_id=user_id, amount=amount, kind=kind, reference=reference, balance_after=balance_after
        )


def account_withdraw(*, user_id: int, amount: int, reference: str, max_attempts: int | None = None) -> BalanceEntry:
    """Take a payment of `amount` (> 0) from the balance."""
    return account_change_balance(
        user_id=user_id, amount=-amount, kind=BalanceEntry.Kind.PAYMENT, reference=reference, max_attempts=max_attempts
    )


def account_refund(*, user_id: int, amount: int, reference: str) -> BalanceEntry:
    return account_change_balance(user_id=user_id, amount=amount, kind=BalanceEntry.Kind.REFUND, reference=reference)


@transaction.atomic
def user_create(*, username: str, balance: int = 0, user_id: int | None = None, **extra) -> User:
    """Create a customer with an account; an opening balance is a ledger top-up."""
    user = User.objects.create(id=user_id, username=username, **extra)
    Account.objects.create(user=user, balance=0)
    if balance:
        account_change_balance(user_id=user.id, amount=balance, kind=BalanceEntry.Kind.TOP_UP, reference="opening")
    return user


def token_create(*, user: User) -> ApiToken:
    return ApiToken.objects.create(key=secrets.token_urlsafe(32), user=user)

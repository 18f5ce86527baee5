"""Balance changes: a version-column optimistic lock with bounded, jittered retry, and a ledger."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from accounts.errors import BalanceConflict, InsufficientBalance
from accounts.models import Account, ApiToken, BalanceEntry, User
from config import metrics
from config.database import sql_one
from config.retry import Backoff, RetryExhausted, retry_on_conflict

logger = logging.getLogger(__name__)

# One round trip per attempt: read the balance and version, update only if the version is
# still the one read (READ COMMITTED re-checks it after waiting for a concurrent writer's
# lock, so a committed concurrent change makes it match nothing), and write the ledger entry
# from the updated row. The entry's id comes back NULL when the update did not happen.
_CHANGE_SQL = """
WITH current AS (
    SELECT balance, version FROM accounts_account WHERE user_id = %(user_id)s
), changed AS (
    UPDATE accounts_account AS account
    SET balance = current.balance + %(amount)s, version = account.version + 1, updated_at = now()
    FROM current
    WHERE account.user_id = %(user_id)s AND account.version = current.version
      AND current.balance + %(amount)s >= 0
    RETURNING account.balance
), entry AS (
    INSERT INTO accounts_balanceentry (account_id, amount, kind, reference, balance_after, created_at)
    SELECT %(user_id)s, %(amount)s, %(kind)s, %(reference)s, changed.balance, now() FROM changed
    RETURNING id, balance_after
)
SELECT current.balance, entry.id, entry.balance_after FROM current LEFT JOIN entry ON true
"""


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """A balance change as written: its ledger entry's id and the balance after it."""

    entry_id: int
    amount: int
    kind: str
    reference: str
    balance_after: int


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
) -> BalanceChange:
    """Add `amount` (negative to take money) to the user's balance and write its ledger entry.

    Safe because the UPDATE only matches the version it read: a concurrent change makes it
    match nothing, and we re-read and retry (bounded, jittered, counted). The ledger entry is
    written by the same statement, so a crash leaves both or neither.

    Raises InsufficientBalance when the balance would go below zero, BalanceConflict when
    every attempt lost the race (`max_attempts=1` is the old design: no retry).
    """

    params = {"user_id": user_id, "amount": amount, "kind": kind, "reference": reference}

    def attempt_once() -> BalanceChange | None:
        row = sql_one(_CHANGE_SQL, params)
        if row is None:
            raise Account.DoesNotExist(f"user {user_id} has no account")
        balance, entry_id, balance_after = row
        if entry_id is not None:
            return BalanceChange(entry_id=entry_id, amount=amount, kind=kind, reference=reference,
                                 balance_after=balance_after)  # fmt: skip
        if balance + amount < 0:
            raise InsufficientBalance(details={"balance": balance, "required": -amount})
        return None  # the version moved on: lost the race

    with transaction.atomic(savepoint=False):
        try:
            return retry_on_conflict(
                attempt_once,
                backoff=_balance_backoff(max_attempts),
                on_conflict=lambda attempt: _count_conflict(user_id, attempt),
            )
        except RetryExhausted as exc:
            metrics.count("balance_conflict_failures")
            logger.warning("balance update for user %s gave up after %s attempts", user_id, exc.attempts)
            raise BalanceConflict(details={"attempts": exc.attempts}) from exc


def account_withdraw(*, user_id: int, amount: int, reference: str, max_attempts: int | None = None) -> BalanceChange:
    """Take a payment of `amount` (> 0) from the balance."""
    return account_change_balance(
        user_id=user_id, amount=-amount, kind=BalanceEntry.Kind.PAYMENT, reference=reference, max_attempts=max_attempts
    )


def account_refund(*, user_id: int, amount: int, reference: str) -> BalanceChange:
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

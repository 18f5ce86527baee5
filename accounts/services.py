"""Balance changes: a version-column optimistic lock with bounded, jittered retry, and a ledger."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import orjson
from django.conf import settings
from django.db import transaction

from accounts.errors import BalanceConflict, InsufficientBalance
from accounts.models import Account, ApiToken, BalanceEntry, User
from config import metrics
from config.database import sql_all, sql_one
from config.retry import Backoff, RetryExhausted, retry_on_conflict

logger = logging.getLogger(__name__)


# The version-checked balance change, as CTEs other statements compose (the synchronous order
# writes its balance change in its own statement). `current` reads the balance and version;
# `changed` updates the account only if the version is still the one read (READ COMMITTED
# re-checks it after waiting for a concurrent writer's lock, so a committed concurrent change
# makes it match nothing), the balance stays >= 0, and the CTE `guard` (if given) has a row.
def balance_change_ctes(*, guard: str = "") -> str:
    guard_from = f", {guard}" if guard else ""
    return f"""
current AS (
    SELECT balance, version FROM accounts_account WHERE user_id = %(balance_user_id)s
), changed AS (
    UPDATE accounts_account AS account
    SET balance = current.balance + %(balance_amount)s, version = account.version + 1, updated_at = now()
    FROM current{guard_from}
    WHERE account.user_id = %(balance_user_id)s AND account.version = current.version
      AND current.balance + %(balance_amount)s >= 0
    RETURNING account.balance
)"""


def balance_entry_cte(*, reference: str, source: str = "") -> str:
    """CTE `entry`: the ledger entry of `changed` (from balance_change_ctes), its reference the
    SQL expression `reference` (which may use the CTE `source`)."""
    source_from = f", {source}" if source else ""
    return f"""
entry AS (
    INSERT INTO accounts_balanceentry (account_id, amount, kind, reference, balance_after, created_at)
    SELECT %(balance_user_id)s, %(balance_amount)s, %(balance_kind)s, {reference}, changed.balance, now()
    FROM changed{source_from}
    RETURNING id, balance_after
)"""


def balance_params(*, user_id: int, amount: int, kind: str) -> dict[str, object]:
    return {"balance_user_id": user_id, "balance_amount": amount, "balance_kind": kind}


# One round trip per attempt; the entry's id comes back NULL when the update did not happen.
_CHANGE_SQL = f"""
WITH {balance_change_ctes()}, {balance_entry_cte(reference="%(reference)s")}
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
    metrics.BALANCE_VERSION_CONFLICTS.inc()
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

    params = {**balance_params(user_id=user_id, amount=amount, kind=kind), "reference": reference}

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
        return balance_retry(attempt_once, user_id=user_id, max_attempts=max_attempts)


T = TypeVar("T")


def balance_retry(attempt_once: Callable[[], T | None], *, user_id: int, max_attempts: int | None = None) -> T:
    """Run a version-checked balance change until it wins: `attempt_once` returns its result,
    or None when the version moved on. Bounded (BALANCE_UPDATE_MAX_ATTEMPTS), jittered and
    counted; raises BalanceConflict when every attempt lost the race."""
    try:
        return retry_on_conflict(
            attempt_once,
            backoff=_balance_backoff(max_attempts),
            on_conflict=lambda attempt: _count_conflict(user_id, attempt),
        )
    except RetryExhausted as exc:
        metrics.BALANCE_CONFLICT_FAILURES.inc()
        logger.warning("balance update for user %s gave up after %s attempts", user_id, exc.attempts)
        raise BalanceConflict(details={"attempts": exc.attempts}) from exc


def account_withdraw(*, user_id: int, amount: int, reference: str, max_attempts: int | None = None) -> BalanceChange:
    """Take a payment of `amount` (> 0) from the balance."""
    return account_change_balance(
        user_id=user_id, amount=-amount, kind=BalanceEntry.Kind.PAYMENT, reference=reference, max_attempts=max_attempts
    )


def account_refund(*, user_id: int, amount: int, reference: str) -> BalanceChange:
    return account_change_balance(user_id=user_id, amount=amount, kind=BalanceEntry.Kind.REFUND, reference=reference)


# --- Many payments at once (the batch settlement) -----------------------------------------

# One round trip per attempt of a batch: for each account, update it only if its version is
# still the one read (as _CHANGE_SQL does for one), and write the ledger entries of the
# accounts that were updated, each with the balance it left. Returns the updated accounts.
_WITHDRAW_MANY_SQL = """
WITH planned AS (
    SELECT * FROM jsonb_to_recordset(%(accounts)s::jsonb) AS planned(user_id bigint, version bigint, balance bigint)
), changed AS (
    UPDATE accounts_account AS account
    SET balance = planned.balance, version = account.version + 1, updated_at = now()
    FROM planned
    WHERE account.user_id = planned.user_id AND account.version = planned.version
    RETURNING account.user_id
), entries AS (
    INSERT INTO accounts_balanceentry (account_id, amount, kind, reference, balance_after, created_at)
    SELECT entry.user_id, -entry.amount, %(kind)s, entry.reference, entry.balance_after, now()
    FROM ROWS FROM (jsonb_to_recordset(%(entries)s::jsonb)
                    AS (user_id bigint, amount bigint, reference text, balance_after bigint))
         WITH ORDINALITY AS entry(user_id, amount, reference, balance_after, position)
    JOIN changed ON changed.user_id = entry.user_id
    ORDER BY entry.position
)
SELECT user_id FROM changed
"""


@dataclass(frozen=True, slots=True)
class Withdrawal:
    user_id: int
    amount: int  # > 0
    reference: str


class WithdrawalOutcome(StrEnum):
    TAKEN = "TAKEN"
    SHORT = "SHORT"  # the balance did not cover it, after the user's earlier withdrawals in the batch
    CONFLICT = "CONFLICT"  # the version kept moving beyond the retry bound: try again later


def account_withdraw_many(*, withdrawals: list[Withdrawal], max_attempts: int | None = None) -> list[WithdrawalOutcome]:
    """Take many payments in the caller's transaction; one outcome per withdrawal, in order.

    A user's withdrawals are taken in the order given, each against what the previous ones
    left; one that the balance does not cover is SHORT and the later ones still get their
    chance. Safe for the same reason as account_change_balance: each account is updated only
    if its version is still the one read, so an account changed meanwhile is re-read and
    planned again (bounded, jittered, counted); the others keep their update. Accounts go in
    user id order, so two batches lock shared rows in the same order. The ledger entries are
    written by the same statement as the balances: a crash leaves both or neither.
    """
    outcomes: list[WithdrawalOutcome | None] = [None] * len(withdrawals)
    waiting = {w.user_id for w in withdrawals}

    def attempt_once() -> bool | None:
        balances = {
            user_id: (balance, version)
            for user_id, balance, version in sql_all(
                "SELECT user_id, balance, version FROM accounts_account WHERE user_id = ANY(%s)", [sorted(waiting)]
            )
        }
        left: dict[int, int] = {}
        planned: dict[int, WithdrawalOutcome] = {}
        entries = []
        for index, withdrawal in enumerate(withdrawals):
            if withdrawal.user_id not in waiting:
                continue
            if withdrawal.user_id not in balances:
                raise Account.DoesNotExist(f"user {withdrawal.user_id} has no account")
            balance = left.get(withdrawal.user_id, balances[withdrawal.user_id][0])
            if balance < withdrawal.amount:
                planned[index] = WithdrawalOutcome.SHORT
                continue
            left[withdrawal.user_id] = balance - withdrawal.amount
            planned[index] = WithdrawalOutcome.TAKEN
            entries.append(
                {"user_id": withdrawal.user_id, "amount": withdrawal.amount, "reference": withdrawal.reference,
                 "balance_after": balance - withdrawal.amount}
            )  # fmt: skip
        changed: set[int] = set()
        if left:
            accounts = [{"user_id": uid, "version": balances[uid][1], "balance": left[uid]} for uid in sorted(left)]
            params = {"accounts": orjson.dumps(accounts).decode(), "entries": orjson.dumps(entries).decode(),
                      "kind": BalanceEntry.Kind.PAYMENT}  # fmt: skip
            changed = {user_id for (user_id,) in sql_all(_WITHDRAW_MANY_SQL, params)}
        # Done: the accounts updated, and those with nothing to take (all their withdrawals SHORT).
        done = changed | (waiting - set(left))
        for index, outcome in planned.items():
            if withdrawals[index].user_id in done:
                outcomes[index] = outcome
        waiting.difference_update(done)
        return True if not waiting else None

    def on_conflict(attempt: int) -> None:
        for user_id in sorted(waiting):
            _count_conflict(user_id, attempt)

    try:
        retry_on_conflict(attempt_once, backoff=_balance_backoff(max_attempts), on_conflict=on_conflict)
    except RetryExhausted as exc:
        metrics.BALANCE_CONFLICT_FAILURES.inc(len(waiting))
        logger.warning("batch balance update gave up on %d accounts after %s attempts", len(waiting), exc.attempts)
    return [outcome or WithdrawalOutcome.CONFLICT for outcome in outcomes]


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

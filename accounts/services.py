"""Balance changes: a version-column optimistic lock with bounded, jittered retry, and a ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

import orjson
import redis
from django.conf import settings
from django.contrib.auth import authenticate
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone
from psycopg import sql

from accounts import queries
from accounts.errors import (
    AccountMissing,
    AdjustmentNotPending,
    BalanceConflict,
    InsufficientBalance,
    InvalidCredentials,
    OwnAdjustment,
)
from accounts.login_limits import login_attempt_count, login_failure_count
from accounts.models import Account, ApiToken, BalanceAdjustmentRequest, BalanceEntry, User
from accounts.queries import CHANGE, WITHDRAW_MANY
from accounts.tokens import (
    MappedToken,
    token_generate,
    token_hash,
    token_map_clear,
    token_map_forget,
    token_map_write,
)
from kernel import metrics
from kernel.actors import admin_reference
from kernel.database import sql_all, sql_execute, sql_one
from kernel.retry import Backoff, RetryExhausted, retry_on_conflict

logger = logging.getLogger(__name__)


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

    params = CHANGE.bind(
        queries.BalanceChange(user_id=user_id, amount=amount, kind=kind), queries.LedgerReference(reference=reference)
    )

    def attempt_once() -> BalanceChange | None:
        row = sql_one(CHANGE.text, params)
        if row is None:
            raise AccountMissing(details={"userId": user_id})
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


@dataclass(frozen=True, slots=True)
class Withdrawal:
    user_id: int
    amount: int  # > 0
    reference: str


class WithdrawalOutcome(StrEnum):
    TAKEN = "TAKEN"
    SHORT = "SHORT"  # the balance did not cover it, after the user's earlier withdrawals in the batch
    NO_ACCOUNT = "NO_ACCOUNT"  # the user has no account: this withdrawal fails alone
    CONFLICT = "CONFLICT"  # the version kept moving beyond the retry bound: try again later


def account_withdraw_many(*, withdrawals: list[Withdrawal], max_attempts: int | None = None) -> list[WithdrawalOutcome]:
    """Take many payments in the caller's transaction; one outcome per withdrawal, in order.

    A user's withdrawals are taken in the order given, each against what the previous ones
    left; one that the balance does not cover is SHORT and the later ones still get their
    chance; a user without an account gets NO_ACCOUNT, the others are taken as usual. Safe for
    the same reason as account_change_balance: each account is updated only if its version is
    still the one read, so an account changed meanwhile is re-read and planned again (bounded,
    jittered, counted); the others keep their update. Accounts go in
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
                planned[index] = WithdrawalOutcome.NO_ACCOUNT
                continue
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
            params = WITHDRAW_MANY.bind(
                queries.WithdrawMany(accounts=orjson.dumps(accounts).decode(), entries=orjson.dumps(entries).decode(),
                                     kind=BalanceEntry.Kind.PAYMENT)
            )  # fmt: skip
            changed = {user_id for (user_id,) in sql_all(WITHDRAW_MANY.text, params)}
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


def account_open(*, user_id: int) -> None:
    """Give the user an empty account unless they have one. Called for every user saved the
    first time, however made (the admin's "Add user", createsuperuser, create_user): a user
    without one could place an order that no settler can pay."""
    Account.objects.get_or_create(user_id=user_id)


_REFERENCE_CHARS = BalanceEntry._meta.get_field("reference").max_length


def balance_adjust(*, user_id: int, amount: int, reason: str, admin: User) -> BalanceChange | BalanceAdjustmentRequest:
    """An admin's top-up (amount > 0) or adjustment of a balance; its ledger row names the admin
    and the reason. A credit above ADMIN_CREDIT_APPROVAL_THRESHOLD is not applied but stored as
    a pending request for a second admin (balance_adjustment_approve), and returned: one admin's
    mistake or bad day does not make money appear. Debits need no second admin: they take
    money out of a customer's reach, not into it.

    Raises InsufficientBalance, BalanceConflict.
    """
    if amount > settings.ADMIN_CREDIT_APPROVAL_THRESHOLD:
        return BalanceAdjustmentRequest.objects.create(
            account_id=user_id, amount=amount, reason=reason, requested_by=admin
        )
    kind = BalanceEntry.Kind.TOP_UP if amount > 0 else BalanceEntry.Kind.ADJUSTMENT
    reference = f"{admin_reference(admin)}: {reason}"[:_REFERENCE_CHARS]
    return account_change_balance(user_id=user_id, amount=amount, kind=kind, reference=reference)


def balance_adjustment_approve(*, request_id: int, approved_by: User) -> BalanceChange:
    """Apply a pending credit, approved by an admin other than the one who asked for it.

    Exactly once, however many approve at the same moment: the request goes from PENDING to
    APPLIED in one compare-and-set UPDATE, in the transaction that credits the balance. A second
    approval's UPDATE waits for the first one's row lock and then matches nothing (READ
    COMMITTED re-reads the status); if the first rolls back, the second applies it. A crash
    leaves both the status and the credit, or neither. A table constraint refuses an APPLIED
    row decided by its requester, too.

    Raises OwnAdjustment, AdjustmentNotPending, BalanceConflict.
    """
    with transaction.atomic():
        request = BalanceAdjustmentRequest.objects.select_related("requested_by").get(pk=request_id)
        if request.requested_by_id == approved_by.pk:
            raise OwnAdjustment()
        _decide(request_id=request_id, status=BalanceAdjustmentRequest.Status.APPLIED, decided_by=approved_by)
        # The request's own row keeps the reason; the ledger's 64 characters name both admins,
        # their ids whole: the names are shortened to what the ids leave room for.
        requester = request.requested_by
        ids_alone = f"admin request {request.pk}:  (id {requester.pk}), approved by  (id {approved_by.pk})"
        room = max(0, (_REFERENCE_CHARS - len(ids_alone)) // 2)
        reference = (
            f"admin request {request.pk}: {requester.get_username()[:room]} (id {requester.pk}), "
            f"approved by {approved_by.get_username()[:room]} (id {approved_by.pk})"
        )[:_REFERENCE_CHARS]
        return account_change_balance(
            user_id=request.account_id, amount=request.amount, kind=BalanceEntry.Kind.TOP_UP, reference=reference
        )


def balance_adjustment_reject(*, request_id: int, rejected_by: User) -> None:
    """Turn a pending credit down (its requester may withdraw it too). Raises AdjustmentNotPending."""
    _decide(request_id=request_id, status=BalanceAdjustmentRequest.Status.REJECTED, decided_by=rejected_by)


def _decide(*, request_id: int, status: str, decided_by: User) -> None:
    """The compare-and-set: PENDING to `status`, or AdjustmentNotPending if it was not PENDING."""
    decided = BalanceAdjustmentRequest.objects.filter(
        pk=request_id, status=BalanceAdjustmentRequest.Status.PENDING
    ).update(status=status, decided_by=decided_by, decided_at=Now())
    if not decided:
        raise AdjustmentNotPending()


@transaction.atomic
def user_create(*, username: str, balance: int = 0, user_id: int | None = None, **extra) -> User:
    """Create a customer with an account (opened by account_open as the user is saved); an
    opening balance is a ledger top-up."""
    user = User.objects.create(id=user_id, username=username, **extra)
    if balance:
        account_change_balance(user_id=user.id, amount=balance, kind=BalanceEntry.Kind.TOP_UP, reference="opening")
    return user


# --- API tokens (accounts/authentication.py: the Redis map and why revocations stay right) ----


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token as it is handed out: `key` is the token itself, shown to its owner this once and
    stored nowhere (the row keeps its hash)."""

    key: str
    token: ApiToken

    @property
    def expires_at(self) -> datetime:
        return self.token.expires_at


def _token_lifetime() -> timedelta:
    return timedelta(days=settings.TOKEN_LIFETIME_DAYS)


def _expires_ms(expires_at: datetime) -> int:
    """An expiry as the token map keeps it: ms since the epoch, rounded down (never later)."""
    return int(expires_at.timestamp() * 1000)


@transaction.atomic
def token_create(*, user: User, lifetime: timedelta | None = None) -> IssuedToken:
    """A new token for `user`, valid for `lifetime` (TOKEN_LIFETIME_DAYS by default), mapped in
    Redis once it commits. Raises InvalidCredentials if the user is no longer active.

    The user's row is locked first (FOR NO KEY UPDATE, as a deactivation's UPDATE locks it):
    a deactivation running meanwhile commits after this token and then forgets it too, rather
    than missing a token that commits after it read the user's tokens."""
    if not User.objects.select_for_update(no_key=True).filter(pk=user.pk, is_active=True).exists():
        raise InvalidCredentials()
    key, key_hash = token_generate()
    expires_at = timezone.now() + (lifetime if lifetime is not None else _token_lifetime())
    token = ApiToken.objects.create(key_hash=key_hash, user=user, expires_at=expires_at)
    _token_map_write_on_commit([MappedToken(key_hash=key_hash, user_id=user.pk, expires_ms=_expires_ms(expires_at))])
    return IssuedToken(key=key, token=token)


# Two arrays in one statement, rather than bulk_create's 100k model instances and parameters.
_CREATE_MANY_SQL = f"""
INSERT INTO {ApiToken._meta.db_table} (key_hash, user_id, created_at, expires_at)
SELECT token.key_hash, token.user_id, now(), %s FROM unnest(%s::bigint[], %s::text[]) AS token(user_id, key_hash)
"""


def token_create_many(*, user_ids: list[int]) -> dict[int, str]:
    """One new token for each user, in one statement (the load-test seed makes 100k), mapped in
    Redis in pipelines once they commit: user id -> token. Hashing a token takes about a
    microsecond, so the hashes are made here."""
    issued = {user_id: token_generate() for user_id in user_ids}
    expires_at = timezone.now() + _token_lifetime()
    sql_execute(_CREATE_MANY_SQL, [expires_at, list(issued), [key_hash for _, key_hash in issued.values()]])
    expires_ms = _expires_ms(expires_at)
    _token_map_write_on_commit(
        [
            MappedToken(key_hash=key_hash, user_id=user_id, expires_ms=expires_ms)
            for user_id, (_, key_hash) in issued.items()
        ]
    )
    return {user_id: key for user_id, (key, _) in issued.items()}


def _token_map_write_on_commit(mapped: list[MappedToken]) -> None:
    def write() -> None:
        try:
            token_map_write(mapped)
        except redis.RedisError:
            # The rows are committed: each token's first request reads the database and maps it.
            logger.warning("could not map %d new token(s) in Redis; their first use maps them", len(mapped),
                           exc_info=True)  # fmt: skip

    transaction.on_commit(write)


def user_authenticate(*, username: str, password: str, client_ip: str) -> User:
    """The user who proves username and password, for the API's login and the admin's alike: one
    password check per attempt, the attempt limited first.

    Raises LoginRateLimited (before any password check) when the username or the client address
    made too many attempts in this window, or everyone together failed LOGIN_FAILED_GLOBAL_LIMIT
    times in it; InvalidCredentials when the pair does not match an active user (the same answer
    for an unknown user, a wrong password and an inactive user; Django's backend hashes the
    password for an unknown user too, so the time does not tell). Lets a RedisError through when
    the attempt cannot be counted: no unlimited guessing while Redis is away.
    """
    login_attempt_count(username=username, client_ip=client_ip)
    user = authenticate(username=username, password=password)
    if user is None:
        login_failure_count()  # for the global cap (LOGIN_FAILED_GLOBAL_LIMIT)
        raise InvalidCredentials()
    return user


def token_login(*, username: str, password: str, client_ip: str) -> IssuedToken:
    """A new token for whoever proves username and password (user_authenticate, whose errors it
    raises)."""
    return token_create(user=user_authenticate(username=username, password=password, client_ip=client_ip))


def token_map_clear_all() -> None:
    """Forget every token of the map, now and again once the caller's transaction commits (the
    load-test seed, which replaces every token and gives old user ids to new users: an old
    token's entry must not name a new user). A RedisError here aborts the caller. A lookup that
    read an old row before the seed committed and refills after the second clear could still
    map it: the seed is for load-test and development data, not a live shop."""
    token_map_clear()
    transaction.on_commit(token_map_clear)


# Revocations, in one statement each, return what the map needs: which tokens, until when.
_REVOKE_SQL = sql.SQL(
    "UPDATE {token} SET revoked_at = now() WHERE revoked_at IS NULL AND {which} "
    "RETURNING key_hash, floor(EXTRACT(EPOCH FROM expires_at) * 1000)::bigint"
)
_LIVE_OF_USERS_SQL = sql.SQL(
    "SELECT key_hash, floor(EXTRACT(EPOCH FROM expires_at) * 1000)::bigint FROM {token} "
    "WHERE revoked_at IS NULL AND expires_at > now() AND user_id = ANY(%s)"
).format(token=sql.Identifier(ApiToken._meta.db_table))


def _revoke_sql(which: str) -> sql.Composed:
    return _REVOKE_SQL.format(token=sql.Identifier(ApiToken._meta.db_table), which=sql.SQL(which))


_REVOKE_ONE_SQL = _revoke_sql("key_hash = %s AND user_id = %s")
_REVOKE_ALL_SQL = _revoke_sql("user_id = %s")
_REVOKE_MANY_SQL = _revoke_sql("id = ANY(%s)")


def _token_map_forget(revoked: list[tuple[str, int]]) -> None:
    """Inside the revoking transaction, before its commit: a tombstone for each token and its
    entry deleted (see accounts/authentication.py). A RedisError rolls the revocation back:
    stored but not enforced, it would leave the token working until it expires."""
    if revoked:
        token_map_forget(revoked)


@transaction.atomic
def token_revoke(*, key: str, user_id: int) -> bool:
    """Revoke the token `key` of `user_id` (its owner logging out); False if it was not live.
    Refused at once by every server. Lets a RedisError through, nothing revoked."""
    revoked = sql_all(_REVOKE_ONE_SQL, [token_hash(key), user_id])
    _token_map_forget(revoked)
    return bool(revoked)


@transaction.atomic
def token_revoke_all(*, user_id: int) -> int:
    """Revoke every live token of `user_id` (their "sign out everywhere", and a password change);
    returns how many were live. Refused at once by every server. Lets a RedisError through,
    nothing revoked."""
    revoked = sql_all(_REVOKE_ALL_SQL, [user_id])
    _token_map_forget(revoked)
    return len(revoked)


@transaction.atomic
def token_revoke_many(*, token_ids: list[int]) -> int:
    """Revoke the given tokens (the admin's action); returns how many were live. Lets a
    RedisError through, nothing revoked."""
    revoked = sql_all(_REVOKE_MANY_SQL, [token_ids])
    _token_map_forget(revoked)
    return len(revoked)


def token_forget_for_users(*, user_ids: list[int]) -> None:
    """Take the live tokens of these users out of the map, for good (a deactivation or deletion,
    from accounts/signals.py, after the UPDATE or before the DELETE and before the commit): the
    database refuses them anyway, and a tombstone keeps a racing refill from mapping them again.
    A reactivated user's old tokens keep working, read from the database on each request. Lets
    a RedisError through: the caller's transaction rolls back."""
    _token_map_forget(sql_all(_LIVE_OF_USERS_SQL, [user_ids]))

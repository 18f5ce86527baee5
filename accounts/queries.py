"""Accounts' SQL: the version-checked balance change and its ledger entry, as fragments other
statements compose (the synchronous order writes its balance change in its own statement,
orders/queries.py), the change on its own, and the batch settlement's many withdrawals.
Composed with psycopg.sql and rendered once at import; each fragment's parameters are one
SqlParams class. The statements as PostgreSQL runs them are in orders/sql/*.sql.

Why SQL at all: one round trip per attempt, the balance and its ledger entry written by the
same statement (a crash leaves both or neither)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from accounts.models import Account, BalanceEntry
from kernel.database import SqlParams, Statement

_ACCOUNT = sql.Identifier(Account._meta.db_table)
_ENTRY = sql.Identifier(BalanceEntry._meta.db_table)


@dataclass(frozen=True, slots=True)
class BalanceChange(SqlParams):
    """A change of `amount` (negative: money taken) to `user_id`'s balance, of ledger `kind`."""

    prefix = "balance_"
    user_id: int
    amount: int
    kind: str


@dataclass(frozen=True, slots=True)
class LedgerReference(SqlParams):
    """The ledger entry's reference, when the change runs on its own."""

    reference: str


# The version-checked balance change, as CTEs other statements compose. `current` reads the
# balance and version; `changed` updates the account only if the version is still the one read
# (READ COMMITTED re-checks it after waiting for a concurrent writer's lock, so a committed
# concurrent change makes it match nothing), the balance stays >= 0, and the CTE `guard` (if
# given) has a row.
def balance_change_ctes(*, guard: sql.Identifier | None = None) -> sql.Composed:
    return sql.SQL("""
current AS (
    SELECT balance, version FROM {account} WHERE user_id = {user_id}
), changed AS (
    UPDATE {account} AS account
    SET balance = current.balance + {amount}, version = account.version + 1, updated_at = now()
    FROM current{guard}
    WHERE account.user_id = {user_id} AND account.version = current.version
      AND current.balance + {amount} >= 0
    RETURNING account.balance
)""").format(
        account=_ACCOUNT,
        user_id=BalanceChange.placeholder("user_id"),
        amount=BalanceChange.placeholder("amount"),
        guard=sql.SQL(", {}").format(guard) if guard else sql.SQL(""),
    )


def balance_entry_cte(*, reference: sql.Composable, source: sql.Identifier | None = None) -> sql.Composed:
    """CTE `entry`: the ledger entry of `changed` (from balance_change_ctes), its reference the
    SQL expression `reference` (which may use the CTE `source`)."""
    return sql.SQL("""
entry AS (
    INSERT INTO {entry} (account_id, amount, kind, reference, balance_after, created_at)
    SELECT {user_id}, {amount}, {kind}, {reference}, changed.balance, now()
    FROM changed{source}
    RETURNING id, balance_after
)""").format(
        entry=_ENTRY,
        user_id=BalanceChange.placeholder("user_id"),
        amount=BalanceChange.placeholder("amount"),
        kind=BalanceChange.placeholder("kind"),
        reference=reference,
        source=sql.SQL(", {}").format(source) if source else sql.SQL(""),
    )


# One round trip per attempt; the entry's id comes back NULL when the update did not happen.
CHANGE = Statement.compose(
    "balance_change",
    sql.SQL("""
WITH {change}, {entry}
SELECT current.balance, entry.id, entry.balance_after FROM current LEFT JOIN entry ON true
""").format(change=balance_change_ctes(), entry=balance_entry_cte(reference=LedgerReference.placeholder("reference"))),
    BalanceChange,
    LedgerReference,
)


@dataclass(frozen=True, slots=True)
class WithdrawMany(SqlParams):
    """A batch's planned accounts (JSON: user_id, version, balance) and its ledger entries
    (JSON: user_id, amount, reference, balance_after, in order), all of ledger `kind`."""

    accounts: str
    entries: str
    kind: str


# One round trip per attempt of a batch: for each account, update it only if its version is
# still the one read (as CHANGE does for one), and write the ledger entries of the accounts
# that were updated, each with the balance it left. Returns the updated accounts.
WITHDRAW_MANY = Statement.compose(
    "withdraw_many",
    sql.SQL("""
WITH planned AS (
    SELECT * FROM jsonb_to_recordset({accounts}::jsonb) AS planned(user_id bigint, version bigint, balance bigint)
), changed AS (
    UPDATE {account} AS account
    SET balance = planned.balance, version = account.version + 1, updated_at = now()
    FROM planned
    WHERE account.user_id = planned.user_id AND account.version = planned.version
    RETURNING account.user_id
), entries AS (
    INSERT INTO {entry} (account_id, amount, kind, reference, balance_after, created_at)
    SELECT entry.user_id, -entry.amount, {kind}, entry.reference, entry.balance_after, now()
    FROM ROWS FROM (jsonb_to_recordset({entries}::jsonb)
                    AS (user_id bigint, amount bigint, reference text, balance_after bigint))
         WITH ORDINALITY AS entry(user_id, amount, reference, balance_after, position)
    JOIN changed ON changed.user_id = entry.user_id
    ORDER BY entry.position
)
SELECT user_id FROM changed
""").format(
        account=_ACCOUNT,
        entry=_ENTRY,
        accounts=WithdrawMany.placeholder("accounts"),
        entries=WithdrawMany.placeholder("entries"),
        kind=WithdrawMany.placeholder("kind"),
    ),
    WithdrawMany,
)

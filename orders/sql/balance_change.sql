WITH 
current AS (
    SELECT balance, version FROM "accounts_account" WHERE user_id = %(balance_user_id)s
), changed AS (
    UPDATE "accounts_account" AS account
    SET balance = current.balance + %(balance_amount)s, version = account.version + 1, updated_at = now()
    FROM current
    WHERE account.user_id = %(balance_user_id)s AND account.version = current.version
      AND current.balance + %(balance_amount)s >= 0
    RETURNING account.balance
), 
entry AS (
    INSERT INTO "accounts_balanceentry" (account_id, amount, kind, reference, balance_after, created_at)
    SELECT %(balance_user_id)s, %(balance_amount)s, %(balance_kind)s, %(reference)s, changed.balance, now()
    FROM changed
    RETURNING id, balance_after
)
SELECT current.balance, entry.id, entry.balance_after FROM current LEFT JOIN entry ON true

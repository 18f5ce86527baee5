WITH planned AS (
    SELECT * FROM jsonb_to_recordset(%(accounts)s::jsonb) AS planned(user_id bigint, version bigint, balance bigint)
), changed AS (
    UPDATE "accounts_account" AS account
    SET balance = planned.balance, version = account.version + 1, updated_at = now()
    FROM planned
    WHERE account.user_id = planned.user_id AND account.version = planned.version
    RETURNING account.user_id
), entries AS (
    INSERT INTO "accounts_balanceentry" (account_id, amount, kind, reference, balance_after, created_at)
    SELECT entry.user_id, -entry.amount, %(kind)s, entry.reference, entry.balance_after, now()
    FROM ROWS FROM (jsonb_to_recordset(%(entries)s::jsonb)
                    AS (user_id bigint, amount bigint, reference text, balance_after bigint))
         WITH ORDINALITY AS entry(user_id, amount, reference, balance_after, position)
    JOIN changed ON changed.user_id = entry.user_id
    ORDER BY entry.position
)
SELECT user_id FROM changed

INSERT INTO "payments_payment" (order_id, user_id, amount, status, created_at)
SELECT charge.order_id, charge.user_id, charge.amount, %(status)s, now()
FROM jsonb_to_recordset(%(charges)s::jsonb) AS charge(order_id bigint, user_id bigint, amount bigint)

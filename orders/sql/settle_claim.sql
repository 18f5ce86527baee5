SELECT id, user_id, total_amount, discount_amount, coupon_code,
       EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8
FROM "orders_order"
WHERE status = 'PENDING_PAYMENT' AND (%(only)s::bigint[] IS NULL OR id = ANY(%(only)s::bigint[]))
  AND id <> ALL(%(skip)s::bigint[])
ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED

WITH fence AS (SELECT 1 WHERE (
    SELECT count(*) FROM "inventory_stock_shard" AS shard WHERE shard.epoch = (%(stock_epochs)s::jsonb ->> shard.tag)::bigint
) = %(stock_shards)s AND (
    SELECT count(*) FROM "inventory_product" AS product
    WHERE product.id = ANY(%(quoted_ids)s::bigint[]) AND product.active
      AND product.price = (%(quoted_prices)s::jsonb ->> product.id::text)::bigint
) = %(quoted_count)s), 
current AS (
    SELECT balance, version FROM "accounts_account" WHERE user_id = %(balance_user_id)s
), changed AS (
    UPDATE "accounts_account" AS account
    SET balance = current.balance + %(balance_amount)s, version = account.version + 1, updated_at = now()
    FROM current, "fence"
    WHERE account.user_id = %(balance_user_id)s AND account.version = current.version
      AND current.balance + %(balance_amount)s >= 0
    RETURNING account.balance
), 
new_order AS (
    INSERT INTO "orders_order" (user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                              reservation_token, created_at, updated_at)
    SELECT %(user_id)s, %(status)s, %(total)s, 0, %(paid_amount)s, %(coupon_code)s, %(stock_token)s, now(), now()
    FROM changed
    RETURNING id, created_at
), items AS (
    INSERT INTO "orders_orderitem" (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, item.product_id, item.quantity, item.unit_price
    FROM new_order, jsonb_to_recordset(%(items)s::jsonb) AS item(product_id bigint, quantity int, unit_price bigint)
), new_events AS (
INSERT INTO "orders_orderevent" (event_id, order_id, type, payload, created_at)
SELECT gen_random_uuid(), "new_order"."id", event.value->>'type', event.value->'payload', clock_timestamp()
FROM "new_order", jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS event(value, position)
ORDER BY event.position
), 
settled AS (
    INSERT INTO "inventory_stockreservation" (token, state, created_at)
    SELECT %(stock_token)s, %(stock_sold)s, now() FROM "new_order"
    RETURNING token
), movements AS (
    INSERT INTO "inventory_stockmovement" (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT item.key::bigint, -item.value::bigint, %(stock_kind)s, 'order:' || "new_order"."id", %(stock_reason)s,
           %(stock_holder)s::bigint, now()
    FROM "new_order", settled, jsonb_each_text(%(stock_quantities)s::jsonb) AS item
    RETURNING 1
), 
payment AS (
    INSERT INTO "payments_payment" (order_id, user_id, amount, status, created_at)
    SELECT "new_order"."id", %(payment_user_id)s, %(payment_amount)s, %(payment_status)s, now() FROM "new_order"
), 
entry AS (
    INSERT INTO "accounts_balanceentry" (account_id, amount, kind, reference, balance_after, created_at)
    SELECT %(balance_user_id)s, %(balance_amount)s, %(balance_kind)s, 'order:' || "new_order"."id", changed.balance, now()
    FROM changed, "new_order"
    RETURNING id, balance_after
)
SELECT current.balance, EXISTS (SELECT 1 FROM fence), new_order.id, new_order.created_at
FROM current LEFT JOIN new_order ON true

WITH fence AS (SELECT 1 WHERE (
    SELECT count(*) FROM "inventory_stock_shard" AS shard WHERE shard.epoch = (%(stock_epochs)s::jsonb ->> shard.tag)::bigint
) = %(stock_shards)s AND (
    SELECT count(*) FROM "inventory_product" AS product
    WHERE product.id = ANY(%(quoted_ids)s::bigint[]) AND product.active
      AND product.price = (%(quoted_prices)s::jsonb ->> product.id::text)::bigint
) = %(quoted_count)s), unpaid AS (
    SELECT count(*) AS orders FROM (
        SELECT 1 FROM "orders_order" WHERE user_id = %(user_id)s AND status = 'PENDING_PAYMENT'
        LIMIT coalesce(%(unpaid_cap)s::int, 0)
    ) AS waiting
), 
new_order AS (
    INSERT INTO "orders_order" (user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                              reservation_token, created_at, updated_at)
    SELECT %(user_id)s, %(status)s, %(total)s, 0, %(paid_amount)s, %(coupon_code)s, %(stock_token)s, now(), now()
    FROM fence, unpaid WHERE %(unpaid_cap)s::int IS NULL OR unpaid.orders < %(unpaid_cap)s::int
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
)
SELECT new_order.id, new_order.created_at, unpaid.orders, EXISTS (SELECT 1 FROM fence),
       (SELECT pg_notify('orders_pending', '') FROM new_order)
FROM unpaid LEFT JOIN new_order ON true

WITH fence AS (SELECT 1 WHERE (
    SELECT count(*) FROM "inventory_stock_shard" AS shard WHERE shard.epoch = (%(stock_epochs)s::jsonb ->> shard.tag)::bigint
) = %(stock_shards)s), new_orders AS (
    INSERT INTO "orders_order" (id, user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                         reservation_token, created_at, updated_at)
    SELECT o.id, o.user_id, %(pending)s, o.total, 0, 0, '', o.token, o.created_at, now()
    FROM fence, jsonb_to_recordset(%(orders)s::jsonb)
        AS o(id bigint, user_id bigint, total bigint, token uuid, created_at timestamptz)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, reservation_token AS token, created_at
), items AS (
    INSERT INTO "orders_orderitem" (order_id, product_id, quantity, unit_price)
    SELECT item.order_id, item.product_id, item.quantity, item.unit_price
    FROM jsonb_to_recordset(%(items)s::jsonb) AS item(order_id bigint, product_id bigint, quantity int, unit_price bigint)
    JOIN new_orders ON new_orders.id = item.order_id
), new_events AS (
    INSERT INTO "orders_orderevent" (event_id, order_id, type, payload, created_at)
    SELECT gen_random_uuid(), new_orders.id, event.value->>'type', event.value->'payload', new_orders.created_at
    FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS event(value, position)
    JOIN new_orders ON new_orders.id = (event.value->>'orderId')::bigint
    ORDER BY event.position
), 
sale AS (
    SELECT sale.* FROM jsonb_to_recordset(%(stock_sales)s::jsonb)
        AS sale(token uuid, product_id bigint, quantity bigint, holder bigint, reference text)
    JOIN "new_orders" ON "new_orders".token = sale.token
), settled AS (
    INSERT INTO "inventory_stockreservation" (token, state, created_at)
    SELECT DISTINCT token, %(stock_sold)s, now() FROM sale
    RETURNING token
), movements AS (
    INSERT INTO "inventory_stockmovement" (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT sale.product_id, -sale.quantity, %(stock_kind)s, sale.reference, '', sale.holder, now()
    FROM sale
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM fence), (SELECT array_agg(id) FROM new_orders)

WITH 
new_order AS (
    INSERT INTO "orders_order" (user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                              reservation_token, created_at, updated_at)
    SELECT %(user_id)s, %(status)s, %(total)s, 0, %(paid_amount)s, %(coupon_code)s, %(stock_token)s, now(), now()
    
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
)
SELECT id, created_at FROM new_order

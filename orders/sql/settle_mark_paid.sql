WITH paid AS (
    UPDATE "orders_order" AS o SET status = %(paid)s, paid_amount = paid.amount, updated_at = now()
    FROM jsonb_to_recordset(%(orders)s::jsonb) AS paid(id bigint, amount bigint)
    WHERE o.id = paid.id AND o.status = %(pending)s
    RETURNING o.id
), new_events AS (
INSERT INTO "orders_orderevent" (event_id, order_id, type, payload, created_at)
SELECT gen_random_uuid(), (event.value->>'orderId')::bigint, event.value->>'type', event.value->'payload', clock_timestamp()
FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS event(value, position)
ORDER BY event.position
)
SELECT count(*) FROM paid

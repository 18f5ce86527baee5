WITH moved AS (
    UPDATE "orders_order" SET status = %(to_status)s, updated_at = now(), "discount_amount" = %(discount_amount)s, "paid_amount" = %(paid_amount)s
    WHERE id = %(order_id)s AND status = %(from_status)s
    RETURNING id
)
INSERT INTO "orders_orderevent" (event_id, order_id, type, payload, created_at)
SELECT gen_random_uuid(), "moved"."id", event.value->>'type', event.value->'payload', clock_timestamp()
FROM "moved", jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS event(value, position)
ORDER BY event.position

INSERT INTO "orders_orderevent" (event_id, order_id, type, payload, created_at)
SELECT gen_random_uuid(), %(order_id)s, event.value->>'type', event.value->'payload', clock_timestamp()
FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS event(value, position)
ORDER BY event.position

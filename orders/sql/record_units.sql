WITH fence AS (SELECT 1 WHERE (
    SELECT count(*) FROM "inventory_stock_shard" AS shard WHERE shard.epoch = (%(stock_epochs)s::jsonb ->> shard.tag)::bigint
) = %(stock_shards)s), 
settled AS (
    INSERT INTO "inventory_stockreservation" (token, state, created_at)
    SELECT %(stock_token)s, %(stock_sold)s, now() FROM "fence"
    RETURNING token
), movements AS (
    INSERT INTO "inventory_stockmovement" (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT item.key::bigint, -item.value::bigint, %(stock_kind)s, %(reference)s, %(stock_reason)s,
           %(stock_holder)s::bigint, now()
    FROM "fence", settled, jsonb_each_text(%(stock_quantities)s::jsonb) AS item
    RETURNING 1
)
SELECT count(*) FROM movements

-- Apply one order event to the per-product sales counter, once: the "seen" marker and the
-- increments happen in one script, so a redelivered event (at-least-once) counts once.
-- KEYS[1] seen-events set, KEYS[2] sales hash (product id -> units)
-- ARGV[1] event id, ARGV[2] sign (+1 paid, -1 cancelled after paid, 0 other), then pairs
-- product id, quantity
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local sign = tonumber(ARGV[2])
if sign ~= 0 then
  for i = 3, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], sign * tonumber(ARGV[i + 1]))
  end
end
return 1

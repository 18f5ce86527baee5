-- Apply one order event to the per-product sales counter, once: the "seen" marker and the
-- increments happen in one script, so a redelivered event (at-least-once) counts once.
-- The seen markers are a sorted set scored by when each event was first seen, so that old ones
-- can be trimmed by age (sales_counter.seen_events_trim); a set from before is converted once.
-- KEYS[1] seen-events zset, KEYS[2] sales hash (product id -> units)
-- ARGV[1] event id, ARGV[2] sign (+1 paid, -1 cancelled after paid, 0 other), ARGV[3] now (ms),
-- then pairs product id, quantity
if redis.call('TYPE', KEYS[1]).ok == 'set' then
  local members = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1])
  for i = 1, #members, 500 do
    local batch = {}
    for j = i, math.min(i + 499, #members) do
      batch[#batch + 1] = ARGV[3]
      batch[#batch + 1] = members[j]
    end
    redis.call('ZADD', KEYS[1], unpack(batch))
  end
end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[1]) == 0 then
  return 0
end
local sign = tonumber(ARGV[2])
if sign ~= 0 then
  for i = 4, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], sign * tonumber(ARGV[i + 1]))
  end
end
return 1

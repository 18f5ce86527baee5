-- Give a reservation's units back, once: the hash is the proof the units are still held, and
-- deleting it in the same script makes a second release (or a release racing reconciliation)
-- a no-op.
-- KEYS[1] tracked-reservations zset, KEYS[2] this reservation's hash
-- ARGV[1] stock key prefix, ARGV[2] token
-- Returns 1 if units were given back, 0 if there was nothing to release.
local items = redis.call('HGETALL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[2])
if #items == 0 then
  return 0
end
for i = 1, #items, 2 do
  redis.call('INCRBY', ARGV[1] .. items[i], items[i + 1])
end
redis.call('DEL', KEYS[2])
return 1

-- Give a reservation's units back, once: the hash is the proof the units are still held, and
-- deleting it in the same script makes a second release (or a release racing reconciliation)
-- a no-op. The units it added to its holder's purchase-limit holdings (fields h:{pid}) are
-- taken back with it.
-- KEYS[1] tracked-reservations zset, KEYS[2] this reservation's hash
-- ARGV[1] stock key prefix, ARGV[2] token, ARGV[3] holdings key prefix
-- Returns 1 if units were given back, 0 if there was nothing to release.
local items = redis.call('HGETALL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[2])
if #items == 0 then
  return 0
end
local holder = redis.call('HGET', KEYS[2], 'u')
for i = 1, #items, 2 do
  local field = items[i]
  if string.sub(field, 1, 2) == 'h:' then
    local key = ARGV[3] .. string.sub(field, 3)
    if redis.call('HINCRBY', key, holder, -tonumber(items[i + 1])) <= 0 then
      redis.call('HDEL', key, holder)
    end
  elseif string.match(field, '^%d+$') then  -- not u (holder), nor o (an accepted order)
    redis.call('INCRBY', ARGV[1] .. field, items[i + 1])
  end
end
redis.call('DEL', KEYS[2])
return 1

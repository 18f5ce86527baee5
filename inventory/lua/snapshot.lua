-- One consistent view for reconciliation: the available count of the given products and
-- every tracked reservation with its items.
-- KEYS[1] tracked-reservations zset; ARGV[1] stock key prefix, ARGV[2] reservation key
-- prefix, ARGV[3..] product ids
-- Returns {{count or false per product}, {token, {pid, qty, ...}, token, {...}, ...}}
local stock = {}
for i = 3, #ARGV do
  stock[#stock + 1] = redis.call('GET', ARGV[1] .. ARGV[i]) or false
end
local reservations = {}
for _, token in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  reservations[#reservations + 1] = token
  reservations[#reservations + 1] = redis.call('HGETALL', ARGV[2] .. token)
end
return {stock, reservations}

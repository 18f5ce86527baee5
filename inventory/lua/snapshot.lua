-- One consistent view for reconciliation: the available count of the given products, every
-- tracked reservation with its fields, and the purchase-limit holdings of the given products.
-- KEYS[1] tracked-reservations zset; ARGV[1] stock key prefix, ARGV[2] reservation key
-- prefix, ARGV[3] holdings key prefix, ARGV[4] n, ARGV[5..4+n] product ids, then the ids of
-- the products whose holdings to read
-- Returns {{count or false per product}, {token, {field, value, ...}, ...}, {{holder, units,
-- ...} per product with holdings}}
local n = tonumber(ARGV[4])
local stock = {}
for i = 5, 4 + n do
  stock[#stock + 1] = redis.call('GET', ARGV[1] .. ARGV[i]) or false
end
local reservations = {}
for _, token in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  reservations[#reservations + 1] = token
  reservations[#reservations + 1] = redis.call('HGETALL', ARGV[2] .. token)
end
local holdings = {}
for i = 5 + n, #ARGV do
  holdings[#holdings + 1] = redis.call('HGETALL', ARGV[3] .. ARGV[i])
end
return {stock, reservations, holdings}

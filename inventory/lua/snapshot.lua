-- One consistent view for reconciliation: the available count of the given products, every
-- tracked reservation with its fields, the purchase-limit holdings of the given products, and
-- every applied move not yet forgotten (move.lua) with its fields.
-- KEYS[1] tracked-reservations zset, KEYS[2] set of applied moves; ARGV[1] stock key prefix,
-- ARGV[2] reservation key prefix, ARGV[3] holdings key prefix, ARGV[4] move marker prefix,
-- ARGV[5] n, ARGV[6..5+n] product ids, then the ids of the products whose holdings to read
-- Returns {{count or false per product}, {token, {field, value, ...}, ...}, {{holder, units,
-- ...} per product with holdings}, {token, {field, value, ...}, ...} per applied move}
local n = tonumber(ARGV[5])
local stock = {}
for i = 6, 5 + n do
  stock[#stock + 1] = redis.call('GET', ARGV[1] .. ARGV[i]) or false
end
local reservations = {}
for _, token in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  reservations[#reservations + 1] = token
  reservations[#reservations + 1] = redis.call('HGETALL', ARGV[2] .. token)
end
local holdings = {}
for i = 6 + n, #ARGV do
  holdings[#holdings + 1] = redis.call('HGETALL', ARGV[3] .. ARGV[i])
end
local moves = {}
for _, token in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  moves[#moves + 1] = token
  moves[#moves + 1] = redis.call('HGETALL', ARGV[4] .. token)
end
return {stock, reservations, holdings, moves}

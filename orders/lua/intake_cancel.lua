-- The buyer cancels an order not yet drained: its record marked cancelled, so that the settler
-- writes it CANCELLED (giving its stock back through the ledger) instead of paying it.
-- KEYS[1] accepted orders' records; ARGV[1] order id, ARGV[2] the buyer's user id
-- Returns {0} no such record of this buyer (drained, or never accepted here), {1, record} now
-- cancelled, {2} a settler is paying it right now, {3, record} cancelled already
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or tostring(cjson.decode(string.sub(record, 2)).u) ~= ARGV[2] then
  return {0}
end
local status = string.sub(record, 1, 1)
if status == 'S' then
  return {2}
end
if status == 'C' then
  return {3, record}
end
record = 'C' .. string.sub(record, 2)
redis.call('HSET', KEYS[1], ARGV[1], record)
return {1, record}

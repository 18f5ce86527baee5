-- A settler takes a batch of accepted orders: each record still waiting is marked settling (so
-- that a cancel now waits for the database), and the stock epoch the batch's sales are fenced
-- by comes back with them.
-- KEYS[1] accepted orders' records, KEYS[2] stock ready flag, KEYS[3] stock epoch
-- ARGV order ids
-- Returns {false} while stock is not loaded (a rebuild is due: the batch waits for it), else
-- {epoch, {order id, record or false}...}: a record begins with its status letter, A accepted,
-- S settling (taken before by a settler that died or failed), C cancelled by its buyer; false:
-- no record (drained already, or Redis lost its data).
-- Why the current epoch: a record this run of Redis holds while its stock is loaded was either
-- accepted under that epoch or held when stock was last rebuilt, which counted its reservation.
redis.replicate_commands()
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local epoch = redis.call('GET', KEYS[3])
if redis.call('GET', KEYS[2]) ~= run_id or not epoch then
  return {false}
end
local found = {}
for _, order_id in ipairs(ARGV) do
  local record = redis.call('HGET', KEYS[1], order_id)
  if record and string.sub(record, 1, 1) == 'A' then
    record = 'S' .. string.sub(record, 2)
    redis.call('HSET', KEYS[1], order_id, record)
  end
  found[#found + 1] = order_id
  found[#found + 1] = record or false
end
return {tonumber(epoch), found}

-- Accept one asynchronous order, all or nothing, in one round trip: nothing of it touches
-- PostgreSQL. The rate counters, the backlog bound, the quoted prices against the catalogue's
-- mirror, the user's cap of unpaid orders, the stock and purchase limit of every item, then the
-- reservation, an order id from the block PostgreSQL handed out, the order's record and its entry
-- in the intake stream, which settlers drain into the database in batches (orders/settlement.py).
-- Atomic because Redis runs a script to completion: no other order interleaves between the checks
-- and the writes. Every key is in KEYS (none built here), so the script can run on a cluster once
-- its keys share a hash slot (docs/design.md, "The intake").
-- KEYS[1] stock ready flag, KEYS[2] stock epoch, KEYS[3] tracked-reservations zset,
--   KEYS[4] this order's reservation hash, KEYS[5] the order id block (a list),
--   KEYS[6] accepted orders' records (hash id -> status letter .. JSON), KEYS[7] the user's
--   undrained orders (a set), KEYS[8] the intake stream, KEYS[9] the accepted-orders counter,
--   then n counters' keys, then for each item: its stock, price mirror, purchase limit, holdings
-- ARGV[1] reservation token, ARGV[2] user id, ARGV[3] cap of unpaid orders (0: none),
--   ARGV[4] backlog bound in ms (0: none), ARGV[5] n counters, ARGV[6] m items,
--   then n pairs (limit, window ms), then m triples (product id, quantity, quoted price)
-- Returns {1, order id, epoch, created ms} accepted
--   | {-4} a price not mirrored: the caller takes the database's path (nothing counted yet)
--   | {-8} no order id left in the block: the caller refills it and calls again (nothing counted)
--   | {-2, counter index, ms until its window ends} | {-1} stock not loaded
--   | {-9, ms the oldest undrained order has waited} | {-5, product ids off sale...}
--   | {-6, product id, price, ...} prices changed | {-7, unpaid orders} the user's cap
--   | {0, product id, available} out of stock | {-3, product id, limit, units already held}
-- Product ids stay strings (a Lua number is exact only to 2^53; ids are bigints).
redis.replicate_commands()
local counters, items = tonumber(ARGV[5]), tonumber(ARGV[6])
local first_item_key, first_item_arg = 10 + counters, 7 + 2 * counters
if redis.call('LLEN', KEYS[5]) == 0 then
  return {-8}
end
for j = 0, items - 1 do
  if not redis.call('GET', KEYS[first_item_key + 4 * j + 1]) then
    return {-4}
  end
end
for i = 1, counters do
  local key = KEYS[9 + i]
  local count = redis.call('INCR', key)
  if count == 1 then
    redis.call('PEXPIRE', key, ARGV[6 + 2 * i])
  end
  if count > tonumber(ARGV[5 + 2 * i]) then
    return {-2, i, math.max(redis.call('PTTL', key), 0)}
  end
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local epoch = redis.call('GET', KEYS[2])
if redis.call('GET', KEYS[1]) ~= run_id or not epoch then
  return {-1}
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local backlog_ms = tonumber(ARGV[4])
if backlog_ms > 0 then
  local oldest = redis.call('XRANGE', KEYS[8], '-', '+', 'COUNT', 1)[1]
  if oldest then
    local waited = now_ms - tonumber(string.match(oldest[1], '^(%d+)'))
    if waited > backlog_ms then
      return {-9, waited}
    end
  end
end
local off, changed = {-5}, {-6}
for j = 0, items - 1 do
  local pid, quoted = ARGV[first_item_arg + 3 * j], ARGV[first_item_arg + 3 * j + 2]
  local mirrored = redis.call('GET', KEYS[first_item_key + 4 * j + 1])
  if mirrored == 'off' then
    off[#off + 1] = pid
  elseif mirrored ~= quoted then
    changed[#changed + 1] = pid
    changed[#changed + 1] = mirrored
  end
end
if #off > 1 then
  return off
end
if #changed > 1 then
  return changed
end
local cap, user = tonumber(ARGV[3]), ARGV[2]
if cap > 0 then
  local unpaid = redis.call('SCARD', KEYS[7])
  if unpaid >= cap then
    return {-7, unpaid}
  end
end
for j = 0, items - 1 do
  local available = tonumber(redis.call('GET', KEYS[first_item_key + 4 * j]) or '0')
  if available < tonumber(ARGV[first_item_arg + 3 * j + 1]) then
    return {0, ARGV[first_item_arg + 3 * j], available}
  end
end
local limited = {}
for j = 0, items - 1 do
  local limit = redis.call('GET', KEYS[first_item_key + 4 * j + 2])
  if limit then
    local quantity = tonumber(ARGV[first_item_arg + 3 * j + 1])
    local held = tonumber(redis.call('HGET', KEYS[first_item_key + 4 * j + 3], user) or '0')
    if held + quantity > tonumber(limit) then
      return {-3, ARGV[first_item_arg + 3 * j], tonumber(limit), held}
    end
    limited[#limited + 1] = j
  end
end
local order_id = redis.call('LPOP', KEYS[5])
local fields, lines = {}, {}
for j = 0, items - 1 do
  local pid, quantity = ARGV[first_item_arg + 3 * j], ARGV[first_item_arg + 3 * j + 1]
  redis.call('DECRBY', KEYS[first_item_key + 4 * j], quantity)
  fields[#fields + 1] = pid
  fields[#fields + 1] = quantity
  lines[#lines + 1] = {pid, tonumber(quantity), tonumber(ARGV[first_item_arg + 3 * j + 2])}
end
for _, j in ipairs(limited) do
  local quantity = ARGV[first_item_arg + 3 * j + 1]
  redis.call('HINCRBY', KEYS[first_item_key + 4 * j + 3], user, quantity)
  fields[#fields + 1] = 'h:' .. ARGV[first_item_arg + 3 * j]
  fields[#fields + 1] = quantity
end
-- 'o' marks the reservation as an accepted order's: reconciliation never gives it back as
-- abandoned, since the settler that drains the order records its sale.
redis.call('HSET', KEYS[4], 'u', user, 'o', order_id, unpack(fields))
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
local record = cjson.encode({u = user, t = now_ms, k = ARGV[1], i = lines})
redis.call('HSET', KEYS[6], order_id, 'A' .. record)
redis.call('SADD', KEYS[7], order_id)
redis.call('XADD', KEYS[8], '*', 'o', order_id)
redis.call('INCR', KEYS[9])
return {1, order_id, tonumber(epoch), now_ms}

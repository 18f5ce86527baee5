-- Reserve every item of one order, all or nothing, after the order's admission counters and
-- within each product's purchase limit.
-- Atomic because Redis runs a script to completion before any other command: no other
-- reservation can interleave between the checks and the increments, so neither stock nor a
-- purchase limit can be passed by parallel orders, and a rate counter never lets one too many by.
-- KEYS[1] ready flag, KEYS[2] pending zset, KEYS[3] this reservation's hash, KEYS[4] stock epoch,
--   KEYS[5..4+n] admission counters (the caller's: rate limits, see orders/limits.py)
-- ARGV[1] stock key prefix, ARGV[2] token, ARGV[3] now (ms), ARGV[4] holder (user id, '' for
--   none), ARGV[5] purchase-limit key prefix, ARGV[6] holdings key prefix, ARGV[7] n, then n
--   pairs (limit, window ms) for the counters, then pairs: product id, quantity
-- Returns {1, epoch} reserved | {0, product id, available} out of stock | {-1} stock not loaded
--   | {-2, counter index (1-based), ms until its window ends} a counter is over its limit
--   | {-3, product id, limit, units already held} the holder's purchase limit
-- A product id goes back as the string it came as: a Lua number is a double, exact only up to
-- 2^53, and ids are bigints.
-- Admission counters are fixed windows: INCR, and PEXPIRE on the window's first count. Each
-- attempt counts, admitted or not, so a client that keeps hammering stays refused until the
-- window ends. They run here, in the reservation's own call, so that limiting costs an order no
-- round trip of its own (the order path is one Redis call and one SQL statement).
-- Purchase limits: `inv:limit:{pid}` holds a product's limit (loaded with stock by
-- reconciliation), `inv:held:{pid}` a hash holder -> units held (paid or in flight). What this
-- script adds is written into the reservation (field h:{pid}, and u: the holder) so that a
-- release takes back exactly that.
-- Stock counts as loaded only by this very run of the server: the ready flag holds the run id
-- of the server that loaded it, so a restart (whose append-only file may lack the last writes)
-- or a failover to a replica makes every order wait for a rebuild from the database. The epoch
-- the counts were loaded under goes back with the reservation: the sale is recorded only while
-- the database's epoch is still that one (a rebuild bumps it first).
-- (INFO needs the @dangerous ACL category; effects replication keeps it off the replicas.)
redis.replicate_commands()
local counters = tonumber(ARGV[7])
for i = 1, counters do
  local key, limit, window = KEYS[4 + i], tonumber(ARGV[6 + 2 * i]), ARGV[7 + 2 * i]
  local count = redis.call('INCR', key)
  if count == 1 then
    redis.call('PEXPIRE', key, window)
  end
  if count > limit then
    return {-2, i, math.max(redis.call('PTTL', key), 0)}
  end
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if not run_id then
  return redis.error_reply('INFO server gave no run_id')
end
local epoch = redis.call('GET', KEYS[4])
if redis.call('GET', KEYS[1]) ~= run_id or not epoch then
  return {-1}
end
-- A call sent again with the same token (a Redis Cluster client retries a command whose reply it
-- lost) finds the reservation it made: reserved once.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {1, tonumber(epoch)}
end
local prefix, holder = ARGV[1], ARGV[4]
local first = 8 + 2 * counters
for i = first, #ARGV, 2 do
  local available = tonumber(redis.call('GET', prefix .. ARGV[i]) or '0')
  if available < tonumber(ARGV[i + 1]) then
    return {0, ARGV[i], available}
  end
end
local limited = {}
if holder ~= '' then
  for i = first, #ARGV, 2 do
    local limit = redis.call('GET', ARGV[5] .. ARGV[i])
    if limit then
      local held = tonumber(redis.call('HGET', ARGV[6] .. ARGV[i], holder) or '0')
      if held + tonumber(ARGV[i + 1]) > tonumber(limit) then
        return {-3, ARGV[i], tonumber(limit), held}
      end
      limited[#limited + 1] = i
    end
  end
end
local fields = {}
for i = first, #ARGV, 2 do
  redis.call('DECRBY', prefix .. ARGV[i], ARGV[i + 1])
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
for _, i in ipairs(limited) do
  redis.call('HINCRBY', ARGV[6] .. ARGV[i], holder, ARGV[i + 1])
  fields[#fields + 1] = 'h:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if holder ~= '' then
  fields[#fields + 1] = 'u'
  fields[#fields + 1] = holder
end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {1, tonumber(epoch)}

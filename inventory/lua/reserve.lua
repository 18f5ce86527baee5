-- Reserve every item of one order, all or nothing.
-- Atomic because Redis runs a script to completion before any other command: no other
-- reservation can interleave between the checks and the decrements.
-- KEYS[1] ready flag, KEYS[2] pending zset, KEYS[3] this reservation's hash, KEYS[4] stock epoch
-- ARGV[1] stock key prefix, ARGV[2] token, ARGV[3] now (ms), then pairs: product id, quantity
-- Returns {1, epoch} reserved | {0, product id, available} out of stock | {-1} stock not loaded
-- Stock counts as loaded only by this very run of the server: the ready flag holds the run id
-- of the server that loaded it, so a restart (whose append-only file may lack the last writes)
-- or a failover to a replica makes every order wait for a rebuild from the database. The epoch
-- the counts were loaded under goes back with the reservation: the sale is recorded only while
-- the database's epoch is still that one (a rebuild bumps it first).
-- (INFO needs the @dangerous ACL category; effects replication keeps it off the replicas.)
redis.replicate_commands()
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if not run_id then
  return redis.error_reply('INFO server gave no run_id')
end
local epoch = redis.call('GET', KEYS[4])
if redis.call('GET', KEYS[1]) ~= run_id or not epoch then
  return {-1}
end
local prefix = ARGV[1]
for i = 4, #ARGV, 2 do
  local available = tonumber(redis.call('GET', prefix .. ARGV[i]) or '0')
  if available < tonumber(ARGV[i + 1]) then
    return {0, tonumber(ARGV[i]), available}
  end
end
for i = 4, #ARGV, 2 do
  redis.call('DECRBY', prefix .. ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {1, tonumber(epoch)}

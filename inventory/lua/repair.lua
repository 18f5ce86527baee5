-- Apply reconciliation's result in one step: shift each product's available count by its
-- drift (a relative change, so reservations made since the snapshot are kept), load the
-- purchase limits and shift their holdings by their drift (relative too), forget reservations
-- the database snapshot showed as sold, and mark stock as loaded by this run of the server
-- (its run id: see reserve.lua). Limits and holdings are in place before the ready flag, so no
-- order after a rebuild runs without them.
-- KEYS[1] tracked-reservations zset, KEYS[2] ready flag, KEYS[3] stock epoch
-- ARGV[1] stock key prefix, ARGV[2] reservation key prefix, ARGV[3] number of products n,
-- ARGV[4] the run id reconciliation started under, ARGV[5] the database's stock epoch,
-- ARGV[6] purchase-limit key prefix, ARGV[7] holdings key prefix, ARGV[8] number of limit
-- entries m, ARGV[9] number of holding drifts k, then n pairs (product id, drift), m pairs
-- (product id, limit; 0: none, its holdings dropped), k triples (product id, holder, drift),
-- then the tokens to forget. If the server restarted since (another run id), stock stays not
-- loaded: its replayed counts need a rebuild of their own, after the wait for older transactions.
redis.replicate_commands()
local n, m, k = tonumber(ARGV[3]), tonumber(ARGV[8]), tonumber(ARGV[9])
local at = 10
for _ = 1, n do
  local key, drift = ARGV[1] .. ARGV[at], tonumber(ARGV[at + 1])
  if drift ~= 0 or redis.call('EXISTS', key) == 0 then
    redis.call('INCRBY', key, drift)
  end
  at = at + 2
end
for _ = 1, m do
  local limit = tonumber(ARGV[at + 1])
  if limit > 0 then
    redis.call('SET', ARGV[6] .. ARGV[at], limit)
  else
    redis.call('DEL', ARGV[6] .. ARGV[at], ARGV[7] .. ARGV[at])
  end
  at = at + 2
end
for _ = 1, k do
  local key = ARGV[7] .. ARGV[at]
  if redis.call('HINCRBY', key, ARGV[at + 1], ARGV[at + 2]) <= 0 then
    redis.call('HDEL', key, ARGV[at + 1])
  end
  at = at + 3
end
for i = at, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('DEL', ARGV[2] .. ARGV[i])
end
if string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[2], ARGV[4])
return 1

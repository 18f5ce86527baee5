-- Apply reconciliation's result in one step: shift each product's available count by its
-- drift (a relative change, so reservations made since the snapshot are kept), forget
-- reservations the database snapshot showed as sold, and mark stock as loaded by this run of
-- the server (its run id: see reserve.lua).
-- KEYS[1] tracked-reservations zset, KEYS[2] ready flag, KEYS[3] stock epoch
-- ARGV[1] stock key prefix, ARGV[2] reservation key prefix, ARGV[3] number of products n,
-- ARGV[4] the run id reconciliation started under, ARGV[5] the database's stock epoch, then n
-- pairs (product id, drift), then the tokens to forget. If the server restarted since (another
-- run id), stock stays not loaded: its replayed counts need a rebuild of their own, after the
-- wait for older transactions.
redis.replicate_commands()
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local key, drift = ARGV[1] .. ARGV[6 + 2 * i], tonumber(ARGV[7 + 2 * i])
  if drift ~= 0 or redis.call('EXISTS', key) == 0 then
    redis.call('INCRBY', key, drift)
  end
end
for i = 6 + 2 * n, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('DEL', ARGV[2] .. ARGV[i])
end
if string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[2], ARGV[4])
return 1

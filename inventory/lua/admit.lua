-- Count an order's attempt against its admission counters (rate limits), for an order whose
-- stock is sharded: reserve.lua counts them in the reservation's own call when stock is on one
-- shard. Fixed windows, as there: INCR, and PEXPIRE on a window's first count; every attempt
-- counts, admitted or not. Stops at the first counter over its limit.
-- KEYS the counters; ARGV n pairs (limit, window ms)
-- Returns {1} admitted | {-2, counter index (1-based), ms until its window ends}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[2 * i - 1]), ARGV[2 * i]
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then
    redis.call('PEXPIRE', KEYS[i], window)
  end
  if count > limit then
    return {-2, i, math.max(redis.call('PTTL', KEYS[i]), 0)}
  end
end
return {1}

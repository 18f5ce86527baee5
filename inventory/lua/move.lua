-- Put the units of moves that bring stock in (a cancelled order's units coming back, a restock)
-- into the counts, and off the holder's holdings for every product that has a purchase limit,
-- each move at most once: run after the move's commit, and by reconciliation for a committed move
-- its snapshot did not show applied, whichever comes first applies it and the other finds its
-- marker. Atomic (one script): a marker exists exactly when the move's units are in.
-- The marker (inv:move:{token}: product id -> units, u -> holder) and the set of applied moves
-- are what reconciliation's snapshot reads, to tell a move applied but not yet committed in its
-- database snapshot from drift; it forgets them once the database acknowledged the move.
-- KEYS[1] set of applied moves
-- ARGV[1] stock key prefix, ARGV[2] move marker prefix, ARGV[3] purchase-limit key prefix,
-- ARGV[4] holdings key prefix, then per move: token, holder (user id, '' for none), n, then n
-- pairs (product id, units)
-- Returns how many moves were applied by this call.
local applied = 0
local at = 5
while at <= #ARGV do
  local token, holder, n = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local marker = ARGV[2] .. token
  if redis.call('EXISTS', marker) == 0 then
    local fields = {}
    for i = at + 3, at + 2 + 2 * n, 2 do
      redis.call('INCRBY', ARGV[1] .. ARGV[i], ARGV[i + 1])
      if holder ~= '' and redis.call('EXISTS', ARGV[3] .. ARGV[i]) == 1 then
        local key = ARGV[4] .. ARGV[i]
        if redis.call('HINCRBY', key, holder, -tonumber(ARGV[i + 1])) <= 0 then
          redis.call('HDEL', key, holder)
        end
      end
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i + 1]
    end
    if holder ~= '' then
      fields[#fields + 1] = 'u'
      fields[#fields + 1] = holder
    end
    redis.call('HSET', marker, unpack(fields))
    redis.call('SADD', KEYS[1], token)
    applied = applied + 1
  end
  at = at + 3 + 2 * n
end
return applied

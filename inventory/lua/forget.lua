-- Stop tracking reservations whose sale the database holds: their units are in the ledger, so
-- reconciliation no longer needs them, and every tracked one makes its snapshot longer.
-- KEYS[1] tracked-reservations zset; ARGV[1] reservation key prefix, ARGV[2..] tokens
-- Returns how many were forgotten.
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('DEL', ARGV[1] .. ARGV[i])
end
return #ARGV - 1

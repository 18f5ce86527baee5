-- Put a cancelled order's units back, and take them off its holder's holdings for every
-- product that has a purchase limit, in one call after the cancellation commits.
-- ARGV[1] stock key prefix, ARGV[2] purchase-limit key prefix, ARGV[3] holdings key prefix,
-- ARGV[4] holder (user id, '' for none), then pairs: product id, quantity
for i = 5, #ARGV, 2 do
  redis.call('INCRBY', ARGV[1] .. ARGV[i], ARGV[i + 1])
  if ARGV[4] ~= '' and redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 1 then
    local key = ARGV[3] .. ARGV[i]
    if redis.call('HINCRBY', key, ARGV[4], -tonumber(ARGV[i + 1])) <= 0 then
      redis.call('HDEL', key, ARGV[4])
    end
  end
end
return 1

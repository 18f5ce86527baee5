-- Release a lock only if we still own it (our random value), so a lock that expired and was
-- taken by someone else is never released by us.
-- KEYS[1] lock key; ARGV[1] our value
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

-- After a batch committed: its entries acknowledged and deleted from the stream, the orders'
-- records and their places in their users' undrained sets dropped. Repeating it is harmless.
-- KEYS[1] the intake stream, KEYS[2] accepted orders' records, KEYS[3] the drained-orders
-- counter, then each order's user's set
-- ARGV[1] the settlers' group, then pairs (stream entry id, order id), one per user set key
local drained = 0
for i = 4, #KEYS do
  local entry, order_id = ARGV[2 * (i - 3)], ARGV[2 * (i - 3) + 1]
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
  drained = drained + redis.call('HDEL', KEYS[2], order_id)
  redis.call('SREM', KEYS[i], order_id)
end
redis.call('INCRBY', KEYS[3], drained)
return drained

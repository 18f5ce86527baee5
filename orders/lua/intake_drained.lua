-- After a batch committed: its entries acknowledged and deleted from the stream, the orders'
-- records and their places in their users' undrained sets dropped. Repeating it is harmless.
-- KEYS[1] the intake stream, KEYS[2] accepted orders' records, then each order's user's set
-- ARGV[1] the settlers' group, then pairs (stream entry id, order id), one per user set key
for i = 3, #KEYS do
  local entry, order_id = ARGV[2 * (i - 2)], ARGV[2 * (i - 2) + 1]
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
  redis.call('HDEL', KEYS[2], order_id)
  redis.call('SREM', KEYS[i], order_id)
end
return #KEYS - 2

-- Map a valid token to its user unless the token was revoked meanwhile: the one way a key of the
-- token map is written (at issue, and by a lookup refilling a key Redis lost), so a writer that
-- read the token's row before a revocation committed cannot bring the token back after it.
-- KEYS[1] auth:token:<hash>, KEYS[2] auth:revoked:<hash> (the revocation's tombstone)
-- ARGV[1] "<user id>:<expires at, ms since the epoch>", ARGV[2] that expiry (ms since the epoch)
-- Returns 1 if written, 0 if the token is revoked.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 1

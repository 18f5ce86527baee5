-- The run id of the server that holds KEYS[1] (a shard's ready flag): on a cluster, the master of
-- the shard's slot, which a script on that slot reaches and a plain INFO might not.
-- (INFO needs the @dangerous ACL category; effects replication keeps it off the replicas.)
redis.replicate_commands()
return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')

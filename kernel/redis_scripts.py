"""Lua scripts in their own files, registered once per process and called by SHA (EVALSHA;
redis-py loads the script again on NOSCRIPT)."""

from functools import cache
from pathlib import Path

from django_redis import get_redis_connection
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError


@cache
def _registered(path: Path) -> Script:
    return get_redis_connection("default").register_script(path.read_text())


def run_lua(path: Path, *, keys: list[str], args: list[object], client=None):
    """Run the script; `client` a pipeline to queue it on (redis-py loads its scripts before the
    pipeline runs), else the default connection."""
    # The client is passed on every call so the script follows the current connection settings.
    client = get_redis_connection("default") if client is None else client
    script = _registered(path)
    if isinstance(client, ClusterPipeline):
        # A cluster's pipeline cannot load a script its node lacks (NOSCRIPT at EXEC): the body.
        return client.execute_command("EVAL", script.script, len(keys), *keys, *args)
    if isinstance(client, RedisCluster):
        # On NOSCRIPT, redis-py would load the script on every master, and fail while any one is
        # down: EVAL sends it to the keys' own node, which keeps it for the next EVALSHA.
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(script.script, len(keys), *keys, *args)
    return script(keys=keys, args=args, client=client)

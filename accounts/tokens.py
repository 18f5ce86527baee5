"""API tokens as the rest of the app sees them: how one is made and hashed, and the Redis map of
valid tokens that authenticates a request without PostgreSQL (accounts/authentication.py says
why it stays right under races, docs/security.md "Tokens").

The map, in the default Redis:

- `auth:token:<hash>` -> "<user id>:<expires at, ms since the epoch>", expiring (PXAT) when the
  token does. Only token_map_write (a Lua script) writes it, and never over a tombstone.
- `auth:revoked:<hash>` -> "1", the tombstone a revocation leaves, expiring when the token would
  have: no refill can bring a revoked token back however late it comes.

`<hash>` is the SHA-256 the database keeps (ApiToken.key_hash), never the token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django_redis import get_redis_connection

from kernel.redis_scripts import run_lua

TOKEN_PREFIX = "auth:token:"
TOMBSTONE_PREFIX = "auth:revoked:"
_WRITE_LUA = Path(__file__).parent / "lua" / "token_map_write.lua"
_PIPELINE_CHUNK = 5_000  # seeding maps 100k tokens: pipelines of this many commands each


@dataclass(frozen=True, slots=True)
class MappedToken:
    """A token's entry in the map: whose it is and until when (ms since the epoch)."""

    key_hash: str
    user_id: int
    expires_ms: int


def token_hash(key: str) -> str:
    """What the database keeps of a token: SHA-256 hex. The token carries 256 random bits, so
    there is nothing to guess and no need for a salt or a slow hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def token_generate() -> tuple[str, str]:
    """A new token (256 random bits, URL-safe) and its hash."""
    key = secrets.token_urlsafe(32)
    return key, token_hash(key)


def token_map_read(key_hash: str) -> MappedToken | None:
    """The token's entry (one GET), None if Redis has none. Raises RedisError."""
    value = get_redis_connection("default").get(TOKEN_PREFIX + key_hash)
    if value is None:
        return None
    user_id, _, expires_ms = value.partition(b":")
    return MappedToken(key_hash=key_hash, user_id=int(user_id), expires_ms=int(expires_ms))


def token_map_write(tokens: Iterable[MappedToken]) -> None:
    """Map each token to its user until its expiry, but none that has a tombstone: one EVALSHA
    for one token (a pipeline would first ask SCRIPT EXISTS, a round trip more), pipelines of
    them for many. Raises RedisError."""
    tokens = list(tokens)
    if len(tokens) == 1:
        _write(tokens[0], client=None)
        return
    redis = get_redis_connection("default")
    for chunk in _chunks(tokens):
        with redis.pipeline(transaction=False) as pipe:
            for token in chunk:
                _write(token, client=pipe)
            pipe.execute()


def _write(token: MappedToken, *, client) -> None:
    run_lua(_WRITE_LUA, keys=[TOKEN_PREFIX + token.key_hash, TOMBSTONE_PREFIX + token.key_hash],
            args=[f"{token.user_id}:{token.expires_ms}", token.expires_ms], client=client)  # fmt: skip


def token_map_forget(tokens: Iterable[tuple[str, int]]) -> None:
    """Leave a tombstone for each (hash, expires ms) until the token's expiry and delete its
    entry, in one MULTI per chunk. Raises RedisError."""
    redis = get_redis_connection("default")
    for chunk in _chunks(list(tokens)):
        with redis.pipeline(transaction=True) as pipe:
            for key_hash, expires_ms in chunk:
                pipe.set(TOMBSTONE_PREFIX + key_hash, 1, pxat=expires_ms)
                pipe.delete(TOKEN_PREFIX + key_hash)
            pipe.execute()


def token_map_clear() -> int:
    """Delete every entry and tombstone (seeding replaces every token and reuses user ids);
    returns how many keys went. Raises RedisError."""
    redis = get_redis_connection("default")
    deleted = 0
    for prefix in (TOKEN_PREFIX, TOMBSTONE_PREFIX):
        keys = list(redis.scan_iter(f"{prefix}*", count=1000))
        for chunk in _chunks(keys):
            deleted += redis.unlink(*chunk)
    return deleted


def _chunks(items: list) -> Iterable[list]:
    return (items[i : i + _PIPELINE_CHUNK] for i in range(0, len(items), _PIPELINE_CHUNK))

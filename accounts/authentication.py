"""Bearer tokens: no password hashing per request, and no PostgreSQL statement either.

A request's token is looked up in Redis, in the map of valid tokens (accounts/tokens.py): one
GET of `auth:token:<hash>`, whose value is the user id and the token's expiry. Only when Redis
has no entry (it lost it, or the token predates the map) does the lookup read the database, one
indexed statement, and write the entry again. A revocation takes effect at once on every
process: it deletes the entry before it commits, and nothing else remembers a token.

Writing the entry and revoking race; the rule that keeps them apart:

- Every write of an entry (at issue, on_commit, and each refill) is one Lua script that writes
  it only if the token has no tombstone `auth:revoked:<hash>`.
- A revocation (and a user's deactivation or deletion, for each of their tokens) writes the
  tombstone and deletes the entry in one MULTI inside its transaction, after its UPDATE and
  before its COMMIT. The tombstone lives until the token would have expired.

So a lookup that read the row while it was live (before the revocation committed) and writes
the entry after the tombstone is refused by the script, however long it stalled between the two;
a lookup that reads the row after the commit finds it revoked. A tombstone until the expiry is
chosen over a short-lived one because nothing then bounds a stall by a timeout, and over a
per-token version because the version would have to be read before each refill (one more round
trip on a miss) and bumped twice, before and after the commit. A revocation rolled back after
its tombstone leaves that token to the database: one statement per request, never a wrong
answer. If Redis does not answer the revocation, it raises and its transaction rolls back: a
revocation is stored only once no entry can outlive it.

An entry carries its expiry, checked against this process's clock, and expires in Redis at the
same instant by Redis' clock: an entry is believed only while both clocks call it valid, so one
skewed clock cannot stretch a token's life.

If Redis does not answer a lookup, every request is looked up in the database (fail closed: no
entry read, none written) until it answers again; the order path needs Redis for its stock
anyway. There is no cache in the process: at 100,000 customers a worker's cache hit 848 of
26,721 requests, and any process cache would bring back the delay of a revocation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from accounts import tokens
from accounts.models import ApiToken, User
from kernel.database import sql_one

logger = logging.getLogger(__name__)

# Run when Redis has no entry for the token (or does not answer). The expiry is the row's, as
# milliseconds since the epoch rounded down, so the entry never outlives the token; validity is
# judged by the database's clock.
_TOKEN_USER_SQL = (
    "SELECT token.user_id, floor(EXTRACT(EPOCH FROM token.expires_at) * 1000)::bigint "
    f"FROM {ApiToken._meta.db_table} AS token JOIN {User._meta.db_table} AS u ON u.id = token.user_id "
    "WHERE token.key_hash = %s AND token.revoked_at IS NULL AND token.expires_at > now() AND u.is_active"
)


class _Redis:
    answers = True  # False while lookups fail: logged once per outage


def _user_id_for(key: str) -> int | None:
    digest = tokens.token_hash(key)
    try:
        mapped = tokens.token_map_read(digest)
    except redis.RedisError as exc:
        _redis_away(exc)
        return _database_lookup(digest, refill=False)
    _Redis.answers = True
    if mapped is None:
        return _database_lookup(digest, refill=True)
    if mapped.expires_ms <= time.time() * 1000:
        return None  # expired by this clock, though Redis still has it
    return mapped.user_id


def _database_lookup(digest: str, *, refill: bool) -> int | None:
    row = sql_one(_TOKEN_USER_SQL, [digest])
    if row is None:
        return None
    user_id, expires_ms = row
    if refill:
        try:
            tokens.token_map_write([tokens.MappedToken(key_hash=digest, user_id=user_id, expires_ms=expires_ms)])
        except redis.RedisError as exc:
            _redis_away(exc)  # the next request reads the database again
    return user_id


def _redis_away(exc: redis.RedisError) -> None:
    if _Redis.answers:
        logger.warning("token map unreadable (%s): every token is looked up in the database until Redis answers", exc)
    _Redis.answers = False


@dataclass(frozen=True, slots=True)
class ApiCaller:
    """The authenticated API user as the views need it: its id. The full row is loaded where it
    is needed; building a User model instance on every request cost measurable CPU."""

    id: int
    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False  # API tokens never carry admin rights: the admin signs in with a password
    is_superuser = False

    @property
    def pk(self) -> int:
        return self.id


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Invalid token.") from exc
        user_id = _user_id_for(key)
        if user_id is None:
            raise AuthenticationFailed("Invalid or expired token.")
        return ApiCaller(user_id), key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'

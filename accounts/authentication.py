"""Bearer tokens: no password hashing per request, and at most one query per token a minute.

A token's user is remembered in the worker process for TOKEN_CACHE_SECONDS, never past the
token's expiry: the order path then spends no round trip on authentication. Revocation reaches
every worker within TOKEN_REVOCATION_CHECK_SECONDS (1 s) without a round trip per request:

- A revocation commits, and only then (on_commit) writes a new random revocation generation to
  Redis (accounts/tokens.py).
- Each worker reads that generation at most once a TOKEN_REVOCATION_CHECK_SECONDS, on the first
  request after the interval; when it changed, the worker forgets every token it remembers.

Why that is safe: the generation moves after the revocation is committed, so a worker that sees
the new generation and then looks the token up reads the revoked row. A request more than one
interval after the bump finds the worker's last read older than the interval, so it reads again
first. A lookup that started before the forgetting (and might have read the row before the
revocation) is not remembered: the cache's epoch changed under it.

If Redis does not answer, a worker cannot tell whether anything was revoked, so it fails closed:
it forgets everything and looks every token up in the database until Redis answers again (one
query per request, about what the order path costs anyway while Redis, which holds the stock,
is away). If the process that revoked dies between its commit and the bump, or Redis is away at
that very moment, the token is refused at the latest TOKEN_CACHE_SECONDS later, as before.

Deactivating or deleting a user in the admin bumps the generation too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from accounts import tokens
from accounts.models import ApiToken, User
from kernel.database import sql_one

logger = logging.getLogger(__name__)

_MAX_REMEMBERED = 100_000
_remembered: dict[str, tuple[int, float]] = {}  # token hash -> (user id, valid until, monotonic)
# Each worker looks every token up once a TOKEN_CACHE_SECONDS: under load about one request in
# ten, so the lookup is one plain statement. The seconds left come from the database's clock,
# as the expiry check does, so a skewed application clock cannot stretch a token's life.
_TOKEN_USER_SQL = (
    "SELECT token.user_id, EXTRACT(EPOCH FROM token.expires_at - now())::float8 "
    f"FROM {ApiToken._meta.db_table} AS token JOIN {User._meta.db_table} AS u ON u.id = token.user_id "
    "WHERE token.key_hash = %s AND token.revoked_at IS NULL AND token.expires_at > now() AND u.is_active"
)

_NEVER_SEEN = object()


class _Revocations:
    """This process's view of the revocation generation (one GET per interval at most)."""

    generation: object = _NEVER_SEEN
    next_check = 0.0
    redis_answers = True  # False: fail closed, nothing is remembered
    epoch = 0  # bumped whenever the cache is emptied: a lookup begun before it is not remembered


def _forget_all() -> None:
    _remembered.clear()
    _Revocations.epoch += 1


def _revocations_check(now: float) -> None:
    if now < _Revocations.next_check:
        return
    _Revocations.next_check = now + settings.TOKEN_REVOCATION_CHECK_SECONDS
    try:
        generation = tokens.generation_read()
    except redis.RedisError as exc:
        if _Revocations.redis_answers:
            logger.warning("token revocations unknown (%s): every token is looked up until Redis answers", exc)
        _Revocations.redis_answers = False
        _forget_all()
        return
    if generation != _Revocations.generation or not _Revocations.redis_answers:
        _forget_all()
    _Revocations.generation = generation
    _Revocations.redis_answers = True


def _user_id_for(key: str) -> int | None:
    digest = tokens.token_hash(key)
    now = time.monotonic()
    _revocations_check(now)
    hit = _remembered.get(digest)
    if hit is not None and hit[1] > now:
        return hit[0]
    epoch = _Revocations.epoch
    row = sql_one(_TOKEN_USER_SQL, [digest])
    if row is None:
        return None
    user_id, seconds_left = row
    if _Revocations.redis_answers and _Revocations.epoch == epoch:
        if len(_remembered) >= _MAX_REMEMBERED:
            _remembered.clear()
        _remembered[digest] = (user_id, now + min(settings.TOKEN_CACHE_SECONDS, seconds_left))
    return user_id


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


def forget_tokens() -> None:
    """Forget every remembered token and the generation last seen (tests start from nothing)."""
    _forget_all()
    _Revocations.generation = _NEVER_SEEN
    _Revocations.next_check = 0.0
    _Revocations.redis_answers = True


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

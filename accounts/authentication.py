"""Bearer tokens: no password hashing per request, and at most one query per token a minute.

A token's user is remembered in the worker process for TOKEN_CACHE_SECONDS: the order path
then spends no round trip on authentication. A revoked token or deactivated user is refused
at the latest that long after the change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from accounts.models import ApiToken, User
from config.database import sql_one

_MAX_REMEMBERED = 100_000
_remembered: dict[str, tuple[int, float]] = {}  # token -> (user id, valid until)
# Each worker looks every token up once a TOKEN_CACHE_SECONDS: under load about one request in
# ten, so the lookup is one plain statement.
_TOKEN_USER_SQL = (
    f"SELECT token.user_id FROM {ApiToken._meta.db_table} AS token JOIN {User._meta.db_table} AS u "
    "ON u.id = token.user_id WHERE token.key = %s AND u.is_active"
)


def _user_id_for(key: str) -> int | None:
    now = time.monotonic()
    hit = _remembered.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    row = sql_one(_TOKEN_USER_SQL, [key])
    user_id = row[0] if row else None
    if user_id is not None:
        if len(_remembered) >= _MAX_REMEMBERED:
            _remembered.clear()
        _remembered[key] = (user_id, now + settings.TOKEN_CACHE_SECONDS)
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
    _remembered.clear()


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

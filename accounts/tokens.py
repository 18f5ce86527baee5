"""API tokens as the rest of the app sees them: how one is made and hashed, and the revocation
generation every worker watches (see accounts/authentication.py and docs/security.md)."""

from __future__ import annotations

import hashlib
import secrets

from django_redis import get_redis_connection

# Not a counter: a fresh random value per revocation. A counter that Redis lost (a flush, a
# restart without its file) would count up again from 1 and could land on the very value a
# worker last saw, which would then never notice the revocation.
GENERATION_KEY = "accounts:token-generation"


def token_hash(key: str) -> str:
    """What the database keeps of a token: SHA-256 hex. The token carries 256 random bits, so
    there is nothing to guess and no need for a salt or a slow hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def token_generate() -> tuple[str, str]:
    """A new token (256 random bits, URL-safe) and its hash."""
    key = secrets.token_urlsafe(32)
    return key, token_hash(key)


def generation_read() -> bytes | None:
    return get_redis_connection("default").get(GENERATION_KEY)


def generation_bump() -> None:
    """Tell every worker to forget the tokens it remembers (they read this at most once a
    TOKEN_REVOCATION_CHECK_SECONDS)."""
    get_redis_connection("default").set(GENERATION_KEY, secrets.token_hex(8))

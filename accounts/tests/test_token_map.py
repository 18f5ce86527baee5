"""The Redis token map (accounts/tokens.py): a used token costs one GET and no statement, a lost
entry is read from the database and mapped again, and nothing maps a revoked token again."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.exceptions import AuthenticationFailed

from accounts import tokens
from accounts.authentication import _TOKEN_USER_SQL, BearerTokenAuthentication
from accounts.errors import InvalidCredentials
from accounts.models import ApiToken, User
from accounts.services import token_create, token_revoke
from devtools.testing import free_port, make_user, run_in_django_process, wire_count
from kernel.database import sql_one
from loadtest.seeding import SeedShape, seed

pytestmark = pytest.mark.django_db(transaction=True)


def authenticated_user_id(key: str) -> int | None:
    """The user id the authentication class gives `key`, None if it refuses it."""
    request = RequestFactory().get("/api/v1/accounts/me", HTTP_AUTHORIZATION=f"Bearer {key}")
    try:
        caller, _ = BearerTokenAuthentication().authenticate(request)
    except AuthenticationFailed:
        return None
    return caller.id


def entry(key: str) -> bytes | None:
    return get_redis_connection("default").get(tokens.TOKEN_PREFIX + tokens.token_hash(key))


def test_a_token_issued_then_used_costs_one_get_and_no_statement():
    issued = token_create(user=make_user())

    with wire_count() as counted, CaptureQueriesContext(connection) as orm_queries:
        user_id = authenticated_user_id(issued.key)

    assert user_id == issued.token.user_id
    assert counted.postgres_round_trips == 0 and len(orm_queries) == 0
    assert counted.redis_commands == ["GET"]


def test_the_entry_names_the_user_and_expires_with_the_token():
    issued = token_create(user=make_user(), lifetime=timedelta(hours=1))
    expires_ms = int(issued.expires_at.timestamp() * 1000)

    digest = tokens.token_hash(issued.key)
    assert entry(issued.key) == f"{issued.token.user_id}:{expires_ms}".encode()
    left_ms = get_redis_connection("default").pttl(tokens.TOKEN_PREFIX + digest)
    assert abs(left_ms - (expires_ms - time.time() * 1000)) < 2_000  # PEXPIRETIME is Redis 7's
    assert not get_redis_connection("default").keys(f"*{issued.key}*")  # the hash only, never the token


def test_a_lost_entry_is_read_from_the_database_once_and_mapped_again():
    issued = token_create(user=make_user())
    mapped = entry(issued.key)
    get_redis_connection("default").delete(tokens.TOKEN_PREFIX + tokens.token_hash(issued.key))  # that key only

    with wire_count() as refilling:
        assert authenticated_user_id(issued.key) == issued.token.user_id
    with wire_count() as mapped_again:
        assert authenticated_user_id(issued.key) == issued.token.user_id

    assert (refilling.postgres_round_trips, refilling.redis_commands) == (1, ["GET", "EVALSHA"])
    assert entry(issued.key) == mapped
    assert (mapped_again.postgres_round_trips, mapped_again.redis_commands) == (0, ["GET"])


def test_an_expired_token_is_refused_even_if_its_entry_lingered():
    issued = token_create(user=make_user(), lifetime=timedelta(seconds=-1))
    assert entry(issued.key) is None  # Redis dropped it at once: it expired before it was written
    expired_ms = int(issued.expires_at.timestamp() * 1000)
    # As if Redis' clock ran late, or the entry were written without its expiry.
    get_redis_connection("default").set(
        tokens.TOKEN_PREFIX + tokens.token_hash(issued.key), f"{issued.token.user_id}:{expired_ms}"
    )

    assert authenticated_user_id(issued.key) is None


def test_an_unknown_token_is_refused_and_maps_nothing():
    assert authenticated_user_id("never-issued") is None
    assert entry("never-issued") is None


# --- Revocations racing a refill ------------------------------------------------------------


def lookup_reads_the_row(key: str) -> tokens.MappedToken:
    """The first half of a lookup that found no entry: the database's answer, not yet mapped."""
    digest = tokens.token_hash(key)
    row = sql_one(_TOKEN_USER_SQL, [digest])
    assert row is not None, "the row was live when it was read"
    return tokens.MappedToken(key_hash=digest, user_id=row[0], expires_ms=row[1])


def test_a_refill_that_read_the_row_before_the_revocation_cannot_map_it_again():
    issued = token_create(user=make_user())
    get_redis_connection("default").delete(tokens.TOKEN_PREFIX + tokens.token_hash(issued.key))
    read_before = lookup_reads_the_row(issued.key)

    assert token_revoke(key=issued.key, user_id=issued.token.user_id)
    tokens.token_map_write([read_before])  # the lookup's second half, after the commit

    assert entry(issued.key) is None
    assert authenticated_user_id(issued.key) is None


def test_a_refill_that_read_the_row_while_the_revocation_was_uncommitted_cannot_map_it_again():
    """The revocation on its own thread and connection stops between its tombstone and its
    commit; a lookup then reads the row, still live to everyone else, and maps it only after the
    commit."""
    issued = token_create(user=make_user())
    uncommitted, commit = threading.Event(), threading.Event()

    def revoke_and_hold() -> None:
        try:
            with transaction.atomic():
                assert token_revoke(key=issued.key, user_id=issued.token.user_id)
                uncommitted.set()
                assert commit.wait(timeout=30)
        finally:
            connection.close()

    revoker = threading.Thread(target=revoke_and_hold)
    revoker.start()
    assert uncommitted.wait(timeout=30)
    assert entry(issued.key) is None  # deleted before the commit
    assert authenticated_user_id(issued.key) == issued.token.user_id  # live: read from the database
    read_during = lookup_reads_the_row(issued.key)
    commit.set()
    revoker.join(timeout=30)
    tokens.token_map_write([read_during])

    assert entry(issued.key) is None
    assert authenticated_user_id(issued.key) is None
    assert ApiToken.objects.get().revoked_at is not None


def test_many_lookups_racing_a_revocation_leave_it_refused_and_unmapped():
    """Real threads: eight lookups in a loop with the entry lost, while the owner revokes."""
    issued = token_create(user=make_user())
    client = get_redis_connection("default")
    client.delete(tokens.TOKEN_PREFIX + tokens.token_hash(issued.key))
    revoked, stop = threading.Event(), threading.Event()
    after_revocation: list[int | None] = []

    def look_up() -> None:
        try:
            while not stop.is_set():
                was_revoked = revoked.is_set()
                user_id = authenticated_user_id(issued.key)
                if was_revoked:
                    after_revocation.append(user_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert token_revoke(key=issued.key, user_id=issued.token.user_id)
    revoked.set()
    threading.Event().wait(0.3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert after_revocation and set(after_revocation) == {None}
    assert entry(issued.key) is None
    assert authenticated_user_id(issued.key) is None


def test_a_revocation_redis_does_not_answer_is_not_made():
    """Stored but not enforced, it would leave the token's entry working until it expires."""
    issued = token_create(user=make_user())
    revoker = run_in_django_process(
        f"""
        import redis
        from accounts.services import token_revoke
        try:
            token_revoke(key={issued.key!r}, user_id={issued.token.user_id})
        except redis.RedisError:
            print("refused")
        """,
        redis_url=f"redis://127.0.0.1:{free_port()}/15",  # nothing listens there
    )

    assert revoker.stdout.strip() == "refused", revoker.stderr
    assert ApiToken.objects.get().revoked_at is None
    assert authenticated_user_id(issued.key) == issued.token.user_id


# --- Users deactivated and deleted --------------------------------------------------------


def test_deleting_users_kills_their_tokens():
    """The admin cannot delete a user (their account is read-only there); a queryset's delete()
    sends pre_delete for each user as the admin's would."""
    users = [make_user(balance=0) for _ in range(2)]  # a ledger entry would protect them
    keys = [token_create(user=user).key for user in users]

    User.objects.filter(pk__in=[user.pk for user in users]).delete()

    assert not ApiToken.objects.exists()
    assert [entry(key) for key in keys] == [None, None]
    assert [authenticated_user_id(key) for key in keys] == [None, None]


def test_a_user_deactivated_by_a_plain_save_loses_every_token_and_another_user_none():
    user, other = make_user(), make_user()
    keys, kept = [token_create(user=user).key for _ in range(2)], token_create(user=other).key

    user.is_active = False
    user.save()

    assert [entry(key) for key in keys] == [None, None]
    assert [authenticated_user_id(key) for key in keys] == [None, None]
    assert authenticated_user_id(kept) == other.id


def test_no_token_is_issued_to_an_inactive_user():
    user = make_user()
    User.objects.filter(pk=user.pk).update(is_active=False)

    with pytest.raises(InvalidCredentials):
        token_create(user=user)
    assert not ApiToken.objects.exists()


# --- Without Redis, and seeding -------------------------------------------------------------


def test_without_redis_a_mapped_token_still_works_from_the_database_and_maps_nothing():
    issued = token_create(user=make_user())
    checked = run_in_django_process(
        f"""
        from accounts.authentication import _user_id_for
        print(_user_id_for({issued.key!r}))
        """,
        redis_url=f"redis://127.0.0.1:{free_port()}/15",
    )

    assert checked.stdout.split() == [str(issued.token.user_id)], checked.stderr


def test_reseeding_refuses_the_last_seeds_tokens_though_their_user_ids_are_reused(tmp_path, monkeypatch):
    monkeypatch.setattr("loadtest.seeding.TOKENS_PATH", tmp_path / "tokens.json")
    first = seed(SeedShape(users=2, products=1, stock=10, balance=10))
    assert authenticated_user_id(first["1"]) == 1
    second = seed(SeedShape(users=2, products=1, stock=10, balance=10))

    assert [authenticated_user_id(first[uid]) for uid in ("1", "2")] == [None, None]
    assert [authenticated_user_id(second[uid]) for uid in ("1", "2")] == [1, 2]
    assert {entry(key) is not None for key in second.values()} == {True}


def test_a_redis_that_lost_every_entry_is_refilled_by_use():
    """A flush (or a restart without its file) costs each token one statement, once."""
    issued = token_create(user=make_user())
    get_redis_connection("default").flushdb()

    assert authenticated_user_id(issued.key) == issued.token.user_id
    with wire_count() as counted:
        assert authenticated_user_id(issued.key) == issued.token.user_id
    assert counted.postgres_round_trips == 0


def test_a_token_made_while_redis_is_away_is_mapped_by_its_first_use():
    user = make_user()
    issued = run_in_django_process(
        f"""
        from accounts.models import User
        from accounts.services import token_create
        print(token_create(user=User.objects.get(pk={user.pk})).key)
        """,
        redis_url=f"redis://127.0.0.1:{free_port()}/15",
    )
    key = issued.stdout.strip()
    assert key and timezone.now() < ApiToken.objects.get().expires_at, issued.stderr
    assert entry(key) is None

    assert authenticated_user_id(key) == user.id
    assert entry(key) is not None

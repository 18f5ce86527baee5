"""Reseeding: any shape after any other, without touching the people who are not customers."""

from __future__ import annotations

import stat

import pytest

from accounts.models import User
from accounts.services import user_create
from devtools.testing import files_open_to_others
from inventory import redis_counts
from loadtest.seeding import CUSTOMER_ID_LIMIT, SeedRefused, SeedShape, seed
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def test_people_added_after_a_seed_get_ids_outside_the_customers_and_a_bigger_reseed_keeps_them():
    seed(SeedShape(users=5, products=2, stock=10))
    staff = User.objects.create_user(username="operator", password="x", is_staff=True)
    someone = user_create(username="walk-in", balance=0)
    assert staff.id > CUSTOMER_ID_LIMIT and someone.id > staff.id  # the limit is make run's admin

    tokens = seed(SeedShape(users=40, products=3, stock=10))

    assert sorted(map(int, tokens)) == list(range(1, 41))
    assert User.objects.filter(pk=staff.pk, is_staff=True).exists()
    assert not User.objects.filter(pk=someone.pk).exists()  # customers are replaced, whoever made them
    assert User.objects.create_user(username="next", password="x").id > staff.id


def test_the_tokens_file_is_never_readable_by_other_users(tokens_path):
    with files_open_to_others(tokens_path.parent) as exposed:
        seed(SeedShape(users=3, products=1, stock=10))
    assert exposed == set()
    assert stat.S_IMODE(tokens_path.stat().st_mode) == 0o600

    tokens_path.chmod(0o644)  # a file from before this rule is replaced by a private one
    seed(SeedShape(users=3, products=1, stock=10))
    assert stat.S_IMODE(tokens_path.stat().st_mode) == 0o600


@pytest.mark.slow
def test_a_big_seed_then_the_default_one_round_trips():
    seed(SeedShape(users=70_000, products=300, stock=5))  # more rows than one statement may bind
    assert User.objects.filter(is_staff=False).count() == 70_000
    tokens = seed(SeedShape())
    assert len(tokens) == 500 and User.objects.filter(is_staff=False).count() == 500
    assert Order.objects.count() == 0


def test_a_staff_user_inside_the_customer_range_stops_the_seed_before_anything_changes():
    seed(SeedShape(users=3, products=1, stock=10))
    User.objects.create_user(id=7, username="old-staff", password="x", is_staff=True)
    with pytest.raises(SeedRefused, match=r"'old-staff' \(id 7\)"):
        seed(SeedShape(users=10, products=1, stock=10))
    assert User.objects.filter(is_staff=False).count() == 3


def test_a_customer_range_past_the_limit_is_refused():
    with pytest.raises(SeedRefused):
        seed(SeedShape(users=CUSTOMER_ID_LIMIT))


def test_a_reseed_mirrors_its_own_prices_and_none_of_the_last_seeds_products():
    seed(SeedShape(users=2, products=4, stock=10, price=5))
    assert redis_counts.prices_mirrored([1, 2, 3, 4]) == {1: 5, 2: 5, 3: 5, 4: 5}

    seed(SeedShape(users=2, products=2, stock=10, price=7))

    assert redis_counts.prices_mirrored([1, 2, 3, 4]) == {1: 7, 2: 7, 3: None, 4: None}

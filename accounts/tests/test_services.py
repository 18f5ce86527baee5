"""Balance changes: optimistic lock with bounded retry, and the ledger that proves them."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from accounts.errors import BalanceConflict, InsufficientBalance
from accounts.models import Account, User
from accounts.selectors import ledger_balance
from accounts.services import account_refund, account_withdraw
from devtools.testing import BalanceRowHeld, CountedSince, make_user, race, wait_for, waiting_on_a_row_lock

pytestmark = pytest.mark.django_db(transaction=True)


def test_withdraw_takes_money_bumps_the_version_and_writes_the_ledger():
    user = make_user(balance=100)
    entry = account_withdraw(user_id=user.id, amount=30, reference="order:1")

    account = Account.objects.get(user=user)
    assert (account.balance, account.version) == (70, 2)
    assert (entry.amount, entry.balance_after, entry.reference) == (-30, 70, "order:1")
    assert ledger_balance(user_id=user.id) == 70


def test_withdrawing_more_than_the_balance_is_refused_and_changes_nothing():
    user = make_user(balance=100)
    with pytest.raises(InsufficientBalance) as failure:
        account_withdraw(user_id=user.id, amount=101, reference="order:1")
    assert failure.value.details == {"balance": 100, "required": 101}
    assert Account.objects.get(user=user).balance == 100 == ledger_balance(user_id=user.id)


@pytest.mark.slow
def test_60_concurrent_withdrawals_with_retry_lose_no_update():
    user = make_user(balance=10_000)
    counted = CountedSince()

    race(60, lambda i: account_withdraw(user_id=user.id, amount=7, reference=f"t{i}"))

    account = Account.objects.get(user=user)
    assert account.balance == 10_000 - 60 * 7 == ledger_balance(user_id=user.id)
    assert account.version == 61
    assert counted["balance_conflict_failures"] == 0


def test_without_retry_a_withdrawal_whose_version_moved_meanwhile_fails_with_conflict():
    user = make_user(balance=100)
    counted = CountedSince()

    def withdraw():
        try:
            return account_withdraw(user_id=user.id, amount=30, reference="t", max_attempts=1)
        finally:
            connection.close()

    with BalanceRowHeld(user_id=user.id, amount=5) as held, ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(withdraw)
        wait_for(waiting_on_a_row_lock, what="the withdrawal waiting behind the top-up")
        held.release()
        with pytest.raises(BalanceConflict):
            outcome.result(timeout=60)

    assert counted["balance_conflict_failures"] == 1
    assert Account.objects.get(user=user).balance == 105 == ledger_balance(user_id=user.id)


@pytest.mark.slow
def test_without_retry_concurrent_withdrawals_lose_no_update_and_refuse_the_rest_cleanly():
    """The old design (one attempt): what fails is refused cleanly, and what succeeds is exact."""
    user = make_user(balance=10_000)
    counted = CountedSince()

    def withdraw(i):
        try:
            account_withdraw(user_id=user.id, amount=7, reference=f"t{i}", max_attempts=1)
            return "ok"
        except BalanceConflict:
            return "conflict"

    outcomes = Counter(race(60, withdraw))

    account = Account.objects.get(user=user)
    assert account.balance == 10_000 - 7 * outcomes["ok"] == ledger_balance(user_id=user.id)
    assert outcomes["ok"] + outcomes["conflict"] == 60
    assert counted["balance_conflict_failures"] == outcomes["conflict"]


def test_a_refund_puts_money_back_through_the_same_lock():
    user = make_user(balance=50)
    account_withdraw(user_id=user.id, amount=50, reference="order:1")
    account_refund(user_id=user.id, amount=50, reference="order:1")
    assert Account.objects.get(user=user).balance == 50 == ledger_balance(user_id=user.id)


@pytest.mark.parametrize("make", ["create_user", "create_superuser", "admin_add_user_page"])
def test_every_user_gets_an_account_however_it_is_made(make, admin_client):
    if make == "admin_add_user_page":
        response = admin_client.post(
            "/admin/accounts/user/add/",
            {"username": "walk-in", "password1": "a-Long-pass-phrase-91", "password2": "a-Long-pass-phrase-91",
             "usable_password": "true"},
        )  # fmt: skip
        assert response.status_code == 302, response.content[:2000]
        user = User.objects.get(username="walk-in")
    else:
        user = getattr(User.objects, make)(username="walk-in", password="a-Long-pass-phrase-91")

    account = Account.objects.get(user_id=user.id)
    assert (account.balance, account.version) == (0, 0)

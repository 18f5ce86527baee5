"""The payment rules on their own: a charge per order at most, many charges in order per user,
a refund once (real PostgreSQL; orders are only ids here, as payments knows them)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.errors import InsufficientBalance
from accounts.models import Account, BalanceEntry
from accounts.selectors import ledger_balance
from accounts.services import WithdrawalOutcome
from devtools.testing import BalanceRowHeld, make_user, wait_for, waiting_on_a_row_lock
from payments.models import Payment, Refund
from payments.services import Charge, payment_refund, payment_take, payment_take_many

pytestmark = pytest.mark.django_db(transaction=True)

TAKEN, SHORT, CONFLICT, NO_ACCOUNT = (
    WithdrawalOutcome.TAKEN,
    WithdrawalOutcome.SHORT,
    WithdrawalOutcome.CONFLICT,
    WithdrawalOutcome.NO_ACCOUNT,
)


def _balance(user) -> int:
    return Account.objects.get(user=user).balance


def test_a_charge_takes_the_amount_with_its_ledger_entry_and_a_second_charge_for_the_order_fails():
    user = make_user(balance=500)
    payment_id = payment_take(order_id=41, user_id=user.id, amount=120)

    with pytest.raises(IntegrityError), transaction.atomic():
        payment_take(order_id=41, user_id=user.id, amount=120)

    assert Payment.objects.get(pk=payment_id).amount == 120 and Payment.objects.count() == 1
    assert _balance(user) == 380 == ledger_balance(user_id=user.id)
    assert BalanceEntry.objects.filter(account_id=user.id, kind=BalanceEntry.Kind.PAYMENT).get().reference == "order:41"


def test_a_charge_the_balance_does_not_cover_writes_nothing():
    user = make_user(balance=50)
    with pytest.raises(InsufficientBalance), transaction.atomic():
        payment_take(order_id=42, user_id=user.id, amount=51)
    assert not Payment.objects.exists() and _balance(user) == 50


def test_many_charges_are_taken_in_order_per_user_each_against_what_the_previous_left():
    first, second, orphan = make_user(balance=250), make_user(balance=100), make_user(balance=0)
    Account.objects.filter(user=orphan).delete()
    charges = [
        Charge(1, first.id, 100),  # 150 left
        Charge(2, second.id, 100),  # 0 left
        Charge(3, first.id, 200),  # short: 150 left
        Charge(4, orphan.id, 10),  # no account
        Charge(5, first.id, 100),  # taken: 50 left
        Charge(6, second.id, 0),  # nothing to take
    ]

    with transaction.atomic():
        outcomes = payment_take_many(charges=charges)

    assert outcomes == [TAKEN, TAKEN, SHORT, NO_ACCOUNT, TAKEN, TAKEN]
    assert sorted(Payment.objects.values_list("order_id", "amount")) == [(1, 100), (2, 100), (5, 100), (6, 0)]
    assert (_balance(first), _balance(second)) == (50, 0)
    assert [ledger_balance(user_id=u.id) for u in (first, second)] == [50, 0]


def test_a_user_whose_balance_kept_moving_is_conflict_and_not_charged_while_the_others_are(settings):
    settings.BALANCE_UPDATE_MAX_ATTEMPTS = 1
    moving, steady = make_user(balance=500), make_user(balance=500)

    def take():
        try:
            with transaction.atomic():
                return payment_take_many(charges=[Charge(7, moving.id, 100), Charge(8, steady.id, 100)])
        finally:
            connection.close()

    with BalanceRowHeld(user_id=moving.id, amount=5) as held, ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(take)
        wait_for(waiting_on_a_row_lock, what="the batch's update waiting behind the top-up")
        held.release()
        outcomes = outcome.result(timeout=60)

    assert outcomes == [CONFLICT, TAKEN]
    assert list(Payment.objects.values_list("order_id", flat=True)) == [8]
    assert (_balance(moving), _balance(steady)) == (505, 400)


def test_a_refund_gives_the_payment_back_once_however_often_it_is_asked():
    user = make_user(balance=300)
    payment_take(order_id=43, user_id=user.id, amount=200)

    first, second = payment_refund(order_id=43), payment_refund(order_id=43)

    assert first is not None and first.amount == 200 and second is None
    assert Payment.objects.get(order_id=43).status == Payment.Status.REFUNDED
    assert Refund.objects.count() == 1
    assert _balance(user) == 300 == ledger_balance(user_id=user.id)
    assert payment_refund(order_id=999) is None  # no payment: nothing to give back

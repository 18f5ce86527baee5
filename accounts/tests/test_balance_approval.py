"""A credit above ADMIN_CREDIT_APPROVAL_THRESHOLD made in the admin waits for a second admin,
and is applied once, however many approve it at the same time."""

from __future__ import annotations

import threading

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client

from accounts.errors import AdjustmentNotPending
from accounts.models import Account, BalanceAdjustmentRequest, BalanceEntry, User
from accounts.selectors import ledger_balance
from accounts.services import balance_adjustment_approve
from devtools.testing import BalanceRowHeld, make_staff, make_user, race, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MONEY = ("accounts.view_account", "accounts.adjust_balance")
REQUESTS = "/admin/accounts/balanceadjustmentrequest/"


@pytest.fixture(autouse=True)
def threshold(settings):
    settings.ADMIN_CREDIT_APPROVAL_THRESHOLD = 1_000


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def adjust(client: Client, user_id: int, amount: int, reason: str = "goodwill"):
    return client.post(f"/admin/accounts/account/{user_id}/adjust/", {"amount": amount, "reason": reason})


def act(client: Client, action: str, request_id: int):
    return client.post(REQUESTS, {"action": action, "_selected_action": [request_id]})


def history(obj) -> list[tuple[int, str]]:
    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk), action_flag=CHANGE
    ).order_by("id")
    return [(entry.user_id, entry.change_message) for entry in entries]


def test_a_credit_above_the_threshold_waits_for_a_second_admin_and_the_requester_cannot_approve_it():
    customer = make_user(balance=100)
    alice, bob = make_staff(username="alice", permissions=MONEY), make_staff(username="bob", permissions=MONEY)
    alice_client, bob_client = signed_in(alice), signed_in(bob)

    assert adjust(alice_client, customer.id, 5_000, reason="compensation for order 7").status_code == 302

    assert Account.objects.get(user=customer).balance == 100  # nothing moved yet
    pending = BalanceAdjustmentRequest.objects.get()
    assert (pending.account_id, pending.amount, pending.reason, pending.requested_by, pending.status) == (
        customer.id, 5_000, "compensation for order 7", alice, BalanceAdjustmentRequest.Status.PENDING,
    )  # fmt: skip
    assert history(Account.objects.get(user=customer)) == [
        (alice.id, f"Credit of +5000 awaits a second admin's approval (request {pending.id}). "
                   "Reason: compensation for order 7"),
    ]  # fmt: skip
    listing = bob_client.get(REQUESTS)
    assert listing.status_code == 200 and "compensation for order 7" in listing.content.decode()

    assert act(alice_client, "approve", pending.id).status_code == 302
    pending.refresh_from_db()
    assert pending.status == BalanceAdjustmentRequest.Status.PENDING
    assert Account.objects.get(user=customer).balance == 100

    assert act(bob_client, "approve", pending.id).status_code == 302

    pending.refresh_from_db()
    assert (pending.status, pending.decided_by) == (BalanceAdjustmentRequest.Status.APPLIED, bob)
    assert Account.objects.get(user=customer).balance == 5_100 == ledger_balance(user_id=customer.id)
    entry = BalanceEntry.objects.filter(account_id=customer.id).latest("id")
    assert (entry.kind, entry.amount) == (BalanceEntry.Kind.TOP_UP, 5_000)
    assert entry.reference == f"admin request {pending.id}: alice (id {alice.id}), approved by bob (id {bob.id})"
    assert history(pending) == [(bob.id, f"Approved: +5000 credited to user {customer.id}.")]
    # Approving again changes nothing.
    assert act(bob_client, "approve", pending.id).status_code == 302
    assert Account.objects.get(user=customer).balance == 5_100


def test_a_rejected_request_is_never_applied():
    customer = make_user(balance=100)
    alice, bob = make_staff(username="alice", permissions=MONEY), make_staff(username="bob", permissions=MONEY)
    adjust(signed_in(alice), customer.id, 5_000)
    pending = BalanceAdjustmentRequest.objects.get()

    assert act(signed_in(bob), "reject", pending.id).status_code == 302
    act(signed_in(make_staff(username="carol", permissions=MONEY)), "approve", pending.id)

    pending.refresh_from_db()
    assert (pending.status, pending.decided_by) == (BalanceAdjustmentRequest.Status.REJECTED, bob)
    assert Account.objects.get(user=customer).balance == 100 == ledger_balance(user_id=customer.id)


def test_a_credit_at_the_threshold_and_any_debit_apply_at_once():
    customer = make_user(balance=5_000)
    client = signed_in(make_staff(username="alice", permissions=MONEY))

    assert adjust(client, customer.id, 1_000).status_code == 302
    assert adjust(client, customer.id, -4_000).status_code == 302

    assert Account.objects.get(user=customer).balance == 2_000
    assert not BalanceAdjustmentRequest.objects.exists()


def test_approving_needs_the_adjust_permission():
    customer = make_user(balance=100)
    adjust(signed_in(make_staff(username="alice", permissions=MONEY)), customer.id, 5_000)
    pending = BalanceAdjustmentRequest.objects.get()
    viewer = signed_in(
        make_staff(username="eve", permissions=("accounts.view_account", "accounts.view_balanceadjustmentrequest"))
    )

    listing = viewer.get(REQUESTS)
    act(viewer, "approve", pending.id)

    assert listing.status_code == 200 and "Approve selected" not in listing.content.decode()
    pending.refresh_from_db()
    assert pending.status == BalanceAdjustmentRequest.Status.PENDING
    assert Account.objects.get(user=customer).balance == 100


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_four_admins_approving_one_request_at_once_credit_it_exactly_once():
    """The account's row is held (by a concurrent top-up) while four admins approve: each
    approval has then either claimed the request and waits for the account, or waits for the
    claim. Reading the status and then writing it would let all four through."""
    customer = make_user(balance=100)
    requester = make_staff(username="alice")
    approvers = [make_staff(username=f"approver{i}") for i in range(4)]
    pending = BalanceAdjustmentRequest.objects.create(
        account_id=customer.id, amount=5_000, reason="goodwill", requested_by=requester
    )
    outcomes: list[object] = []

    def approve(i: int):
        try:
            return balance_adjustment_approve(request_id=pending.id, approved_by=approvers[i])
        except AdjustmentNotPending as refused:
            return refused

    with BalanceRowHeld(user_id=customer.id, amount=5) as held:
        approving = threading.Thread(target=lambda: outcomes.extend(race(4, approve)))
        approving.start()
        wait_for(lambda: _waiting_on_locks() >= 4, what="four approvals waiting on locks")
        held.release()
        approving.join(60)

    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["AdjustmentNotPending"] * 3 + ["BalanceChange"]
    assert Account.objects.get(user=customer).balance == 100 + 5 + 5_000 == ledger_balance(user_id=customer.id)
    pending.refresh_from_db()
    assert pending.status == BalanceAdjustmentRequest.Status.APPLIED
    assert pending.decided_by in approvers


def test_the_ledger_names_both_admins_by_their_whole_ids_however_long_their_names_and_ids():
    alice = User.objects.create_user(id=9_000_001, username="alice-who-runs-the-night-shift", is_staff=True)
    bob = User.objects.create_user(id=9_000_002, username="bob-who-approves-in-the-morning", is_staff=True)
    customer = make_user(balance=100)
    pending = BalanceAdjustmentRequest.objects.create(account_id=customer.id, amount=5_000, reason="r",
                                                      requested_by=alice)  # fmt: skip

    balance_adjustment_approve(request_id=pending.id, approved_by=bob)

    reference = BalanceEntry.objects.filter(account_id=customer.id).latest("id").reference
    assert len(reference) <= 64
    assert reference.startswith(f"admin request {pending.id}: ali") and f"(id {alice.id}), approved by bob" in reference
    assert reference.endswith(f"(id {bob.id})")

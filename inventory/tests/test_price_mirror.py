"""The price mirror (inv:price:<id>): a price change or an off-sale, once committed, is honoured
by every order accepted after the commit, so the mirror never shows the old value after it."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client

from accounts.models import User
from devtools.testing import make_product, make_staff, run_in_django_process, wait_for, waiting_on_a_row_lock
from inventory import redis_counts, services
from inventory.models import Product
from inventory.reconciliation import inventory_reconcile, prices_mirror_load
from inventory.services import product_create, product_delete, product_update

pytestmark = pytest.mark.django_db(transaction=True)

OFF = redis_counts.PRICE_OFF


def _mirrored(product: Product) -> int | str | None:
    return redis_counts.prices_mirrored([product.id])[product.id]


def _committed_price(product: Product) -> int:
    """The price as a new transaction of this thread's connection sees it (committed)."""
    return Product.objects.get(pk=product.pk).price


def _editor() -> Client:
    staff = make_staff(
        username="editor",
        permissions=("inventory.view_product", "inventory.change_product", "inventory.add_product"),
    )
    client = Client()
    client.force_login(staff)
    return client


def _form(product: Product, **changes) -> dict:
    form = {"name": product.name, "price": product.price, "active": "on", "purchase_limit": ""}
    form.update(changes)
    return {key: value for key, value in form.items() if value is not None}  # active=None: unticked


def _thread(target, *args) -> threading.Thread:
    def run():
        try:
            target(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_created_product_is_mirrored_once_its_creation_commits():
    on_sale = make_product(price=250)
    off_sale = product_create(name="Not yet", price=90, active=False)

    assert redis_counts.prices_mirrored([on_sale.id, off_sale.id, off_sale.id + 1]) == {
        on_sale.id: 250, off_sale.id: OFF, off_sale.id + 1: None
    }  # fmt: skip


def test_a_price_change_and_an_off_sale_saved_in_the_admin_reach_the_mirror_after_the_commit():
    product = make_product(price=100)
    editor = _editor()
    change = f"/admin/inventory/product/{product.id}/change/"

    assert editor.post(change, _form(product, price=120)).status_code == 302
    assert _mirrored(product) == 120 == _committed_price(product)
    assert editor.post(change, _form(product, price=120, active=None)).status_code == 302
    assert _mirrored(product) == OFF and not Product.objects.get(pk=product.pk).active
    assert editor.post(change, _form(product, price=130)).status_code == 302
    assert _mirrored(product) == 130

    assert editor.post("/admin/inventory/product/add/", _form(product, name="Added", price=75)).status_code == 302
    added = Product.objects.get(name="Added")
    assert _mirrored(added) == 75


def test_while_the_admin_change_is_in_its_transaction_the_mirror_key_is_absent_and_the_database_old():
    """The admin's transaction is held open after the product's update: its log entry points at
    the editor, whose row another transaction holds FOR UPDATE (the log's foreign key waits)."""
    product = make_product(price=100)
    editor = _editor()
    editor_id = User.objects.get(username="editor").id
    holding, release = threading.Event(), threading.Event()
    answers = []

    def hold_the_editors_row():
        with transaction.atomic():
            User.objects.select_for_update().get(pk=editor_id)
            holding.set()
            release.wait(30)

    holder = _thread(hold_the_editors_row)
    assert holding.wait(30)
    admin = _thread(lambda: answers.append(editor.post(f"/admin/inventory/product/{product.id}/change/",
                                                        _form(product, price=180))))  # fmt: skip
    try:
        wait_for(waiting_on_a_row_lock, what="the admin's log entry waiting for the editor's row")
        assert _mirrored(product) is None  # orders take the database's path...
        assert _committed_price(product) == 100  # ...which shows the old price until the commit
    finally:
        release.set()
        holder.join(30)
        admin.join(30)
    assert answers[0].status_code == 302
    assert _mirrored(product) == 180 == _committed_price(product)


def test_a_change_held_open_keeps_the_key_absent_until_its_commit_writes_the_new_price():
    product = make_product(price=100)
    changed, commit = threading.Event(), threading.Event()

    def change():
        with transaction.atomic():
            product_update(product=Product.objects.get(pk=product.pk), price=140, active=True)
            changed.set()
            commit.wait(30)

    changer = _thread(change)
    assert changed.wait(30)
    assert _mirrored(product) is None and _committed_price(product) == 100
    commit.set()
    changer.join(30)
    assert _mirrored(product) == 140 == _committed_price(product)


def test_a_name_change_leaves_the_mirror_alone():
    product = make_product(price=100)
    product_update(product=product, name="Renamed")
    assert _mirrored(product) == 100 and Product.objects.get(pk=product.pk).name == "Renamed"


CRASH_BETWEEN_COMMIT_AND_MIRROR = """
    import os
    from inventory import redis_counts
    from inventory.models import Product
    from inventory.services import product_update

    def die(**kwargs):
        os._exit(9)  # the change has committed; its mirror write never happens

    redis_counts.prices_write = die
    product_update(product=Product.objects.get(pk={product_id}), {field}={value})
"""


@pytest.mark.parametrize(("field", "value", "restored"), [("price", 260, 260), ("active", False, OFF)])
def test_a_process_killed_between_the_commit_and_the_mirror_write_leaves_it_absent_until_reconciliation(
    field, value, restored
):
    product = make_product(price=100)

    crashed = run_in_django_process(CRASH_BETWEEN_COMMIT_AND_MIRROR.format(product_id=product.id, field=field,
                                                                           value=value))  # fmt: skip

    assert crashed.returncode == 9, crashed.stderr
    assert getattr(Product.objects.get(pk=product.pk), field) == value  # committed
    assert _mirrored(product) is None  # orders take the database's path
    report = inventory_reconcile()
    assert report.prices_mirrored == 1
    assert _mirrored(product) == restored


def test_a_reconciliation_that_read_the_old_price_writes_it_before_the_change_can_delete_the_key(monkeypatch):
    """The bad interleaving, forced: the reconciliation has read the old price and not written
    it yet; the change waits for its share lock, so the old value goes in first and the change's
    delete and write come after it."""
    product = make_product(price=100)
    read, write = threading.Event(), threading.Event()
    real_write = redis_counts.prices_write
    reconciler_thread = []

    def paused_write(**kwargs):
        if threading.current_thread() is reconciler_thread[0]:
            read.set()
            assert write.wait(30)
        real_write(**kwargs)

    monkeypatch.setattr(redis_counts, "prices_write", paused_write)
    reconciler = threading.Thread(target=lambda: (inventory_reconcile(), connection.close()))
    reconciler_thread.append(reconciler)
    reconciler.start()
    assert read.wait(30)
    changer = _thread(lambda: product_update(product=Product.objects.get(pk=product.pk), price=300))
    try:
        wait_for(waiting_on_a_row_lock, what="the change waiting for the reconciliation's share lock")
        assert _committed_price(product) == 100 and _mirrored(product) == 100
    finally:
        write.set()
        reconciler.join(30)
        changer.join(30)
    assert _committed_price(product) == 300
    assert _mirrored(product) == 300


def test_a_reconciliation_started_during_a_change_waits_for_its_commit_and_writes_the_new_price():
    product = make_product(price=100)
    changed, commit = threading.Event(), threading.Event()
    reports = []

    def change():
        with transaction.atomic():
            product_update(product=Product.objects.get(pk=product.pk), active=False)
            changed.set()
            commit.wait(30)

    changer = _thread(change)
    assert changed.wait(30)
    reconciler = _thread(lambda: reports.append(inventory_reconcile()))
    try:
        wait_for(waiting_on_a_row_lock, what="the reconciliation waiting for the change's row lock")
        assert _mirrored(product) is None
    finally:
        commit.set()
        changer.join(30)
        reconciler.join(30)
    assert reports[0].prices_mirrored == 1
    assert _mirrored(product) == OFF


def test_a_late_write_after_an_earlier_commit_never_brings_back_its_older_price(monkeypatch):
    """A change's write after its commit reads the row again: when it runs late, after a second
    change committed, it writes the second change's price, not its own."""
    product = make_product(price=100)
    committed, go = threading.Event(), threading.Event()
    real_load = services.prices_mirror_load
    first = []

    def late_load(**kwargs):
        if threading.current_thread() is first[0]:
            committed.set()
            assert go.wait(30)
        real_load(**kwargs)

    monkeypatch.setattr(services, "prices_mirror_load", late_load)
    slow = threading.Thread(target=lambda: (product_update(product=Product.objects.get(pk=product.pk), price=200),
                                            connection.close()))  # fmt: skip
    first.append(slow)
    slow.start()
    assert committed.wait(30)  # the first change committed; its write is late
    product_update(product=Product.objects.get(pk=product.pk), price=300)
    assert _mirrored(product) == 300
    go.set()
    slow.join(30)
    assert _mirrored(product) == 300 == _committed_price(product)


def test_changes_racing_reconciliations_always_find_their_committed_price_in_the_mirror():
    """Real threads, no pause: after each change returns (committed, its write done), the mirror
    shows exactly its price, whatever the reconciliations running meanwhile wrote."""
    product = make_product(price=1)
    done = threading.Event()
    seen_after_commit = []
    loads = []

    def reconcile_until_done():
        while not done.is_set():
            loads.append(prices_mirror_load())

    reconcilers = [_thread(reconcile_until_done) for _ in range(2)]
    try:
        for price in range(2, 102):
            product_update(product=product, price=price, active=price % 7 != 0)
            seen_after_commit.append((price, _mirrored(product)))
    finally:
        done.set()
        for reconciler in reconcilers:
            reconciler.join(30)
    assert seen_after_commit == [(price, OFF if price % 7 == 0 else price) for price in range(2, 102)]
    assert len(loads) > 0


def test_the_rebuild_after_redis_lost_its_data_restores_the_mirror():
    on_sale, off_sale = make_product(price=100), make_product(price=50)
    product_update(product=off_sale, active=False)

    redis_counts.redis_client().flushdb()  # Redis lost its data
    assert redis_counts.prices_mirrored([on_sale.id, off_sale.id]) == {on_sale.id: None, off_sale.id: None}
    report = inventory_reconcile()

    assert report.rebuilt and report.prices_mirrored == 2
    assert redis_counts.prices_mirrored([on_sale.id, off_sale.id]) == {on_sale.id: 100, off_sale.id: OFF}


def test_a_check_only_reconciliation_writes_no_mirror():
    product = make_product(price=100)
    redis_counts.prices_forget(product_ids=[product.id])
    assert inventory_reconcile(repair=False).prices_mirrored == 0
    assert _mirrored(product) is None


def test_a_deleted_product_loses_its_mirror_key():
    product = make_product(price=100, stock_quantity=0)
    product_delete(product=product)
    assert _mirrored(product) is None
    assert prices_mirror_load(product_ids=[product.id]) == 0 and _mirrored(product) is None


def test_the_mirror_of_ten_thousand_products_is_written_whole_in_one_load():
    Product.objects.bulk_create(Product(name=f"Product {i}", price=i, active=i % 10 != 0) for i in range(1, 10_001))
    ids = list(Product.objects.order_by("id").values_list("id", flat=True))

    started = time.perf_counter()
    written = prices_mirror_load()
    elapsed = time.perf_counter() - started

    assert written == 10_000
    mirrored = redis_counts.prices_mirrored(ids)
    prices = dict(Product.objects.values_list("id", "price"))
    assert mirrored == {pid: OFF if prices[pid] % 10 == 0 else prices[pid] for pid in ids}
    print(f"prices_mirror_load of 10,000 products: {elapsed * 1000:.1f} ms")

"""Dump the order path's assembled statements as they were before issue 20 (a one-off record to
compare the composed statements against): `python orders/sql/dump_before.py DIR` writes one
file per statement. Imports the module-level strings the order path and settlement ran then."""

import os
import sys
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from accounts import services as accounts  # noqa: E402
from inventory import services as inventory  # noqa: E402
from orders import events, settlement  # noqa: E402
from orders import services as orders  # noqa: E402
from payments import services as payments  # noqa: E402

STATEMENTS = {
    "pay_order": orders._PAY_ORDER_SQL,
    "accept_order": orders._ACCEPT_ORDER_SQL,
    "insert_order": orders._INSERT_ORDER_SQL,
    "insert_pending_order": orders._INSERT_PENDING_ORDER_SQL,
    "move": orders._MOVE_SQL.format(assignments=""),
    "move_paid": orders._MOVE_SQL.format(
        assignments="".join(f", {name} = %({name})s" for name in ("discount_amount", "paid_amount"))
    ),
    "settle_claim": settlement._CLAIM_SQL,
    "settle_mark_paid": settlement._MARK_PAID_SQL,
    "balance_change": accounts._CHANGE_SQL,
    "withdraw_many": accounts._WITHDRAW_MANY_SQL,
    "payment_insert": payments._INSERT_PAYMENT_SQL,
    "payment_insert_many": payments._INSERT_PAYMENTS_SQL,
    "events_record": events._RECORD_SQL,
    "record_units": inventory._RECORD_UNITS_SQL,
    "epoch_and_prices_fence": inventory.EPOCH_AND_PRICES_FENCE_SQL,
}

if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, text in STATEMENTS.items():
        (target / f"{name}.sql").write_text(text.strip() + "\n")
    print(f"{len(STATEMENTS)} statements written to {target}")

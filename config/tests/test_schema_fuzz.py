"""The OpenAPI schema is the contract: a fuzzer holds it to what a live server answers.

schemathesis reads /api/schema from a real gunicorn (with a settler beside it, as deployed) on
this test's database and Redis, generates requests for every operation from it, valid ones and
invalid ones, and checks every answer: no 5xx, its status documented for the operation, its
body valid against that status's schema, its content type and its documented headers
(Retry-After, Location, WWW-Authenticate, ...), and an invalid request refused. Its settings
are in schemathesis.toml beside this file; schema_fuzz_hooks.py points some requests at the
caller's own products and orders.

Bounded so that the suite stays within minutes: 25 requests per operation and phase (about 600
in all), the same requests every run (deterministic), 20-40 s on the 2-core box.
SCHEMA_FUZZ_EXAMPLES=200 sends more (about 2,900 requests, 2.5 min); SCHEMA_FUZZ_HAR=<path>
keeps every request and answer as a HAR file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from accounts.services import token_create
from devtools.testing import Settler, free_port, make_product, make_user
from loadtest.server import web_server
from orders.services import OrderLine, order_place

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")
RUN_BOUND_S = 300  # a hang guard, not a measure: the run takes 15-30 s


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GUNICORN_WORKERS", "2")
        with django_db_blocker.unblock():
            log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
            with web_server(strategy="new", port=free_port(), log_path=log) as served:
                yield served.base_url


def _fuzz_data() -> dict[str, str]:
    """The caller with a balance and two tokens, products it can order, orders to look at and
    cancel (one of someone else's), as the hooks read them."""
    caller, someone_else = make_user(balance=10**9), make_user(balance=10**6)
    products = [make_product(price=price, stock_quantity=10**6, name=f"Fuzzed {price}") for price in (1, 250)]
    orders = [
        order_place(user_id=user.id, lines=[OrderLine(product.id, 1, product.price)]).order.id
        for user, product in ((caller, products[0]), (caller, products[1]), (someone_else, products[0]))
    ]
    return {
        "SCHEMA_FUZZ_TOKEN": token_create(user=caller).key,
        "SCHEMA_FUZZ_REVOCABLE_TOKEN": token_create(user=caller).key,
        "SCHEMA_FUZZ_USER_ID": str(caller.id),
        "SCHEMA_FUZZ_PRODUCTS": ",".join(f"{p.id}:{p.price}" for p in products),
        "SCHEMA_FUZZ_ORDERS": ",".join(map(str, orders)),
    }


def test_every_answer_the_fuzzer_provokes_is_the_one_the_schema_documents(server):
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", "--no-color"]
    if os.environ.get("SCHEMA_FUZZ_EXAMPLES"):
        command += ["--max-examples", os.environ["SCHEMA_FUZZ_EXAMPLES"]]
    if os.environ.get("SCHEMA_FUZZ_HAR"):
        command += ["--report", "har", "--report-har-path", os.environ["SCHEMA_FUZZ_HAR"]]
    command.append(f"{server}/api/schema")
    env = {**os.environ, **_fuzz_data()}
    settler = Settler(name="schema-fuzz")  # pays the 202s, as a deployment does
    try:
        run = subprocess.run(
            command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=RUN_BOUND_S
        )
    finally:
        settler.stop()

    report = Path(settings.BASE_DIR) / "test-output" / "schema-fuzz.txt"
    report.parent.mkdir(exist_ok=True)
    report.write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"schemathesis found answers the schema does not document ({report}):\n" + (
        run.stdout[-20_000:] + run.stderr[-5_000:]
    )

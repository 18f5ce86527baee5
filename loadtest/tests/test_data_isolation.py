"""A load run never eats the data `make run` serves.

A run that starts its own gunicorn reseeds a database, Redis db and tokens file of its own; one
against --url reseeds that server's data only when told to (--reseed), and says which first.
The end-to-end test runs `manage.py loadtest` as a developer types it (no SHOP_TESTING), in a
process of its own, against a stand-in for the developer's database, Redis db and tokens file.
"""

import json
import os
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import User
from config import local
from config.env import database_url_naming, redis_url_with_db
from config.local import configured_database_url
from devtools.testing import free_port, make_product, make_user
from inventory.models import Product
from loadtest import server
from orders.models import Order

DEVELOPER_DB = "test_shop_devdata"
RUN_DB = f"{DEVELOPER_DB}_loadtest"  # the default: the configured database's name + _loadtest
DEVELOPER_REDIS_DB = 13
# Not the default 14, which a developer's own `make loadtest` on the same Redis would use meanwhile.
RUN_REDIS_DB = 12
SECRET_KEY = "tests-only-secret-key-for-the-stand-in-developer"


def _admin() -> psycopg.Connection:
    """A connection to the server's maintenance database, to create and drop databases."""
    params = {**connection.get_connection_params(), "dbname": "postgres"}
    return psycopg.connect(**params, autocommit=True)


def _drop(*names: str) -> None:
    with _admin() as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rows_by_table(name: str) -> dict[str, tuple]:
    """Every table of database `name` with a hash of all its rows: equal means unchanged."""
    with psycopg.connect(**{**connection.get_connection_params(), "dbname": name}) as db:
        tables = [t for (t,) in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        every_row = "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t"
        return {table: db.execute(every_row.format(f'"{table}"')).fetchone() for table in sorted(tables)}


def _count(name: str, table: str) -> int:
    with psycopg.connect(**{**connection.get_connection_params(), "dbname": name}) as db:
        return db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def _redis(db: int) -> redis.Redis:
    return redis.Redis.from_url(redis_url_with_db(settings.REDIS_URL, db))


def _keyspace(db: int) -> dict[bytes, bytes]:
    client = _redis(db)
    return {key: client.dump(key) for key in sorted(client.scan_iter(count=1000))}


def _developer_environment(tmp_path: Path) -> dict[str, str]:
    """A developer's shell: their own database, Redis db and tokens file named, no SHOP_TESTING."""
    env = {key: value for key, value in os.environ.items() if key != "SHOP_TESTING"}
    env.update(
        DATABASE_URL=database_url_naming(configured_database_url(), DEVELOPER_DB),
        REDIS_URL=redis_url_with_db(settings.REDIS_URL, DEVELOPER_REDIS_DB),
        REDIS_LOADTEST_URL=redis_url_with_db(settings.REDIS_URL, RUN_REDIS_DB),
        LOADTEST_TOKENS_PATH=str(tmp_path / "developer-tokens.json"),
        LOADTEST_RUN_TOKENS_PATH=str(tmp_path / "run-tokens.json"),
        SECRET_KEY=SECRET_KEY,
    )
    return env


@pytest.fixture
def developer_data(tmp_path):
    """A stand-in for what `make run` serves: a migrated database with a customer and a product,
    their Redis db with the product's stock and a key of the developer's own, a tokens file."""
    _drop(DEVELOPER_DB, RUN_DB)
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{DEVELOPER_DB}"')
    _redis(DEVELOPER_REDIS_DB).flushdb()
    _redis(RUN_REDIS_DB).flushdb()
    env = _developer_environment(tmp_path)
    code = textwrap.dedent("""
        import django
        django.setup()
        from django.core.management import call_command
        from devtools.testing import make_product, make_user
        call_command("migrate", verbosity=0)
        make_user(username="developer", balance=4_242)
        make_product(name="The developer's widget", price=1_234, stock_quantity=7)
    """)
    made = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, capture_output=True, text=True,
                          env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"}, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    _redis(DEVELOPER_REDIS_DB).set("developer:note", "keep me")
    Path(env["LOADTEST_TOKENS_PATH"]).write_text('{"1": "the developer\'s token"}')
    yield env
    _drop(DEVELOPER_DB, RUN_DB)
    _redis(DEVELOPER_REDIS_DB).flushdb()
    _redis(RUN_REDIS_DB).flushdb()


@pytest.mark.slow
def test_a_load_run_of_its_own_leaves_the_developers_database_redis_and_tokens_as_they_were(developer_data, tmp_path):
    env = developer_data
    tables_before, keys_before = _rows_by_table(DEVELOPER_DB), _keyspace(DEVELOPER_REDIS_DB)
    assert _count(DEVELOPER_DB, "inventory_product") == 1 and b"developer:note" in keys_before
    tokens_before = Path(env["LOADTEST_TOKENS_PATH"]).read_text()
    reports = tmp_path / "reports"

    run = subprocess.run(
        [sys.executable, "manage.py", "loadtest", "--scenario", "smoke", "--duration-scale", "0.05",
         "--port", str(free_port()), "--reports-dir", str(reports)],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    # The developer's data, as it was.
    assert _rows_by_table(DEVELOPER_DB) == tables_before
    assert _keyspace(DEVELOPER_REDIS_DB) == keys_before
    assert Path(env["LOADTEST_TOKENS_PATH"]).read_text() == tokens_before
    assert "this run's own data: database postgres://" in run.stdout
    assert f"/{RUN_DB} and Redis redis://" in run.stdout
    # The run's own: created, migrated and seeded, and every order gunicorn answered is in it
    # (had gunicorn or the settlers used another database, the invariants would not have held).
    (report_dir,) = reports.iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["invariants_hold"], summary["invariants"]
    assert summary["figures"]["orders_created"] > 0
    assert _count(RUN_DB, "orders_order") == summary["figures"]["orders_created"]
    assert _count(RUN_DB, "inventory_product") == summary["seed_shape"]["products"]
    assert _count(RUN_DB, "accounts_user") == summary["seed_shape"]["users"]
    assert _redis(RUN_REDIS_DB).exists("inv:ready")
    assert len(json.loads(Path(env["LOADTEST_RUN_TOKENS_PATH"]).read_text())) == summary["seed_shape"]["users"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # gunicorn serves what this test committed
def test_against_a_url_nothing_is_reseeded_without_reseed_and_with_it_the_target_is_named_first(tmp_path, tokens_path):
    customer, product = make_user(username="deployed customer"), make_product(name="Deployed widget")
    reports = tmp_path / "reports"
    with server.web_server(strategy="new", port=free_port(), log_path=tmp_path / "gunicorn.log") as served:
        with pytest.raises(CommandError) as refused:
            call_command("loadtest", scenario="smoke", duration_scale=0.05, url=served.base_url, reports_dir=reports)
        message = str(refused.value)
        assert "replaces that deployment's customers, products, orders and stock" in message
        assert "add --reseed to go ahead" in message
        assert list(User.objects.values_list("username", flat=True)) == [customer.username]
        assert list(Product.objects.values_list("name", flat=True)) == [product.name]
        assert not Order.objects.exists() and not tokens_path.exists() and not reports.exists()

        out = StringIO()
        call_command("loadtest", scenario="smoke", duration_scale=0.05, url=served.base_url, reseed=True,
                     reports_dir=reports, stdout=out)  # fmt: skip

    first_line = out.getvalue().splitlines()[0]
    assert first_line.startswith("--reseed: about to reseed database ")
    assert f"/{connection.settings_dict['NAME']} and Redis " in first_line
    assert first_line.endswith(f"/{settings.TEST_REDIS_DB}, for {served.base_url}")
    assert not User.objects.filter(username=customer.username).exists()
    assert Product.objects.count() == 5 and Order.objects.exists()


def test_reseed_without_url_is_refused_before_anything_runs():
    with pytest.raises(CommandError, match="--reseed goes with --url"):
        call_command("loadtest", "--reseed")


def _settings_in_child(**env: str) -> list[str]:
    program = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATABASES['default']['NAME'], settings.REDIS_URL, settings.LOADTEST_TOKENS_PATH)"
    )
    child_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=settings.BASE_DIR,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_load_runs_own_defaults_are_the_database_with_loadtest_redis_db_14_and_its_own_tokens_file():
    url = database_url_naming(configured_database_url(), "shop")
    name, redis_url, tokens = _settings_in_child(
        SHOP_TESTING="", SHOP_LOADTEST="1", DATABASE_URL=url, REDIS_URL="redis://127.0.0.1:6379/0",
        LOADTEST_TOKENS_PATH="/somewhere/make-runs-tokens.json", SECRET_KEY=SECRET_KEY,
    )  # fmt: skip

    assert (name, redis_url) == ("shop_loadtest", "redis://127.0.0.1:6379/14")
    assert tokens == str(local.DATA_DIR / "loadtest-tokens.json")


def test_under_tests_the_load_flag_changes_nothing():
    url = database_url_naming(configured_database_url(), "shop")
    name, redis_url, _ = _settings_in_child(SHOP_TESTING="1", SHOP_LOADTEST="1", DATABASE_URL=url,
                                            REDIS_URL="redis://127.0.0.1:6379/0", REDIS_TEST_URL="")  # fmt: skip

    assert (name, redis_url) == ("shop", f"redis://127.0.0.1:6379/{settings.TEST_REDIS_DB}")


@pytest.mark.slow
def test_the_settlement_benchmark_also_reseeds_only_its_own_data(developer_data, tmp_path):
    env = developer_data
    tables_before, keys_before = _rows_by_table(DEVELOPER_DB), _keyspace(DEVELOPER_REDIS_DB)

    run = subprocess.run(
        [sys.executable, "manage.py", "settle_benchmark", "--orders", "20", "--batch-sizes", "10",
         "--reports-dir", str(tmp_path / "reports")],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    assert _rows_by_table(DEVELOPER_DB) == tables_before
    assert _keyspace(DEVELOPER_REDIS_DB) == keys_before
    assert _count(RUN_DB, "orders_order") == 20

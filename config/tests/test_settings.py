"""Settings read from the environment: values users type are taken, wrong ones named."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.checks import run_checks

from accounts.development import development_password_give
from accounts.models import User
from config import local
from config.env import database_url_naming, redis_url_with_db


def _in_child(expression: str, **env: str) -> subprocess.CompletedProcess:
    """Print `expression` from a fresh process with settings loaded under `env`."""
    program = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, expression, expected",
    [
        # gunicorn.conf.py lowercases LOG_LEVEL; settings used to crash every worker on "warning".
        ({"LOG_LEVEL": "warning"}, "settings.LOG_LEVEL", "WARNING"),
        (
            {"DATABASE_URL": "", "REDIS_URL": "", "SHOP_TESTING": ""},
            "settings.DATABASES['default']['PORT'], settings.REDIS_URL",
            f"{local.PG_PORT} {local.default_redis_url()}",
        ),
        (
            {"TOKEN_LIFETIME_DAYS": "", "DEBUG": " ", "DB_PREPARE_THRESHOLD": ""},
            "settings.TOKEN_LIFETIME_DAYS, settings.DEBUG, settings.DATABASES['default']['OPTIONS']"
            "['prepare_threshold']",
            "30 False 5",
        ),
        ({"ALLOWED_HOSTS": "shop.example, api.example"}, "settings.ALLOWED_HOSTS", "['shop.example', 'api.example']"),
        (
            # (both URLs set: the own servers' password files would be made in that directory)
            {"SHOP_DATA_DIR": "elsewhere/data", "DATABASE_URL": "postgres://unused/x", "REDIS_URL": "redis://unused/0"},
            "__import__('config.local').local.DATA_DIR",
            str(settings.BASE_DIR / "elsewhere" / "data"),
        ),
        # A settled reservation kept too short could let a late sale and a release both happen.
        (
            {"STOCK_RESERVATION_RETENTION_SECONDS": "60", "STOCK_RESERVATION_GRACE_SECONDS": "600"},
            "settings.STOCK_RESERVATION_RETENTION_SECONDS",
            "6000",
        ),
    ],
    ids=[
        "log-level-lower-case",
        "empty-urls",
        "empty-variables",
        "hosts-with-spaces",
        "relative-data-dir",
        "reservation-retention-floor",
    ],
)
def test_settings_take_what_users_type(env, expression, expected):
    child = _in_child(expression, **env)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == expected


def test_unknown_log_level_is_named():
    child = _in_child("settings.LOG_LEVEL", LOG_LEVEL="loud")
    assert child.returncode != 0
    assert "LOG_LEVEL='LOUD'" in child.stderr
    assert "WARNING" in child.stderr


@pytest.mark.parametrize("name", ["TOKEN_LIFETIME_DAYS", "IDEMPOTENCY_WAIT_SECONDS"])  # an int, a float
def test_a_number_that_does_not_parse_names_its_variable(name):
    child = _in_child(f"settings.{name}", **{name: "1 minute"})
    assert child.returncode != 0
    assert f"ImproperlyConfigured: {name}='1 minute' is not valid here" in child.stderr


def test_gunicorn_reads_the_same_variables():
    env = {**os.environ, "GUNICORN_WORKERS": "", "GUNICORN_THREADS": "3", "LOG_LEVEL": "WARNING", "BIND": ""}
    config = subprocess.run(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-c", "config/gunicorn.conf.py", "--print-config"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stderr
    lines = {
        line.split("=", 1)[0].strip(): line.split("=", 1)[1].strip()
        for line in config.stdout.splitlines()
        if "=" in line
    }
    assert lines["bind"] == "['127.0.0.1:8080']"
    assert lines["threads"] == "3"
    assert lines["worker_class"] == "gthread"
    assert lines["loglevel"] == "warning"
    assert int(lines["workers"]) >= 2


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/15"),
        ("redis://:p%40ss@cache:6380/0", "redis://:p%40ss@cache:6380/15"),
        ("rediss://cache/2?ssl_cert_reqs=none", "rediss://cache/15?ssl_cert_reqs=none"),
        ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=15"),
        ("redis://cache?db=3", "redis://cache/15"),
    ],
)
def test_tests_redis_is_database_15_of_the_same_server(url, expected):
    assert redis_url_with_db(url, 15) == expected


@pytest.mark.parametrize(
    "configured, expected",
    [
        ("postgres://shop:p%40ss@db.internal:5433/shop", "postgres://shop:p%40ss@db.internal:5433/test_shop"),
        ("postgres://shop@db/shop?sslmode=require", "postgres://shop@db/test_shop?sslmode=require"),
        ("postgres:////var/run/postgresql/shop", "postgres:////var/run/postgresql/test_shop"),
        ("postgres://postgres@/shop?host=/tmp&port=5433", "postgres://postgres@/test_shop?host=/tmp&port=5433"),
        ("postgres://shop@db:5432?service=orders", "postgres://shop@db:5432/test_shop?service=orders"),
    ],
)
def test_the_url_for_child_processes_is_the_configured_one_naming_the_test_database(configured, expected):
    assert database_url_naming(configured, "test_shop") == expected


# The deploy checks read the database too (config.E003): these tests let them.
@pytest.mark.django_db
@pytest.mark.parametrize("development_key, refused", [(True, True), (False, False)])
def test_deploy_check_refuses_the_development_secret_key(settings, development_key, refused):
    settings.SECRET_KEY_IS_DEVELOPMENT = development_key
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert ("config.E001" in ids) is refused


@pytest.mark.django_db
@pytest.mark.parametrize(
    "allow_loopback, token, warned",
    [(True, "", True), (True, "s3cret", False), (False, "", False), (False, "s3cret", False)],
)
def test_deploy_check_warns_when_loopback_alone_guards_the_metrics(settings, allow_loopback, token, warned):
    """Behind a proxy on the same host every caller comes from loopback: /metrics is public."""
    settings.METRICS_ALLOW_LOOPBACK, settings.METRICS_TOKEN = allow_loopback, token
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert ("config.W003" in ids) is warned


@pytest.mark.django_db
def test_deploy_check_refuses_users_with_the_development_password():
    customer = User.objects.create(id=7, username="user7", password="!")
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert "config.E003" not in ids

    development_password_give(user_ids_below=1_000_000)
    refused = [m for m in run_checks(include_deployment_checks=True) if m.id == "config.E003"]
    customer.set_password("one of their own")
    customer.save()
    ids_after = {message.id for message in run_checks(include_deployment_checks=True)}

    assert len(refused) == 1 and refused[0].is_serious() and "1 user(s)" in refused[0].msg
    assert "config.E003" not in ids_after

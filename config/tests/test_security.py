"""What a deployment cannot start without (SECRET_KEY), its HTTPS settings, and Redis that never
evicts: each proven in fresh processes with a clean environment, as a server would start."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys

import pytest
import redis
from django.conf import settings

from config.env import ENV_FILE
from devtools.testing import free_port

# A clean environment as a deployment would have it: no test switch, DEBUG and SECRET_KEY unset
# (blank counts as unset), a database of its own. Values come only from here and .env.
CLEAN = {"SHOP_TESTING": "", "DEBUG": "", "SECRET_KEY": "", "DATABASE_URL": "postgres://shop@db.internal/shop"}
STRONG_KEY = secrets.token_urlsafe(50)
HTTPS = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}
# /metrics for the token's holder alone, not for whoever is on loopback (a proxy on the host)
METRICS = {"METRICS_TOKEN": secrets.token_urlsafe(32), "METRICS_ALLOW_LOOPBACK": "false"}


@pytest.fixture(autouse=True)
def _no_secret_key_in_env_file():
    if ENV_FILE.exists() and any(line.strip().startswith("SECRET_KEY") for line in ENV_FILE.read_text().splitlines()):
        pytest.skip(".env sets SECRET_KEY: these tests need a machine without one")


def _child(args: list[str], *envs: dict[str, str]) -> subprocess.CompletedProcess:
    """`args` run by a fresh Python under this environment updated by `envs`, in order."""
    merged = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    for env in envs:
        merged.update(env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=settings.BASE_DIR,
        env=merged,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _setup_and_print(expression: str, *envs: dict[str, str]) -> subprocess.CompletedProcess:
    program = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return _child(["-c", program], *envs)


def _check_deploy(*envs: dict[str, str]) -> subprocess.CompletedProcess:
    return _child(["manage.py", "check", "--deploy"], *envs)


def test_without_secret_key_a_deployment_refuses_to_start():
    for child in (_setup_and_print("settings.SECRET_KEY", CLEAN), _check_deploy(CLEAN)):
        assert child.returncode != 0
        assert "ImproperlyConfigured: SECRET_KEY is not set" in child.stderr
        assert child.stdout == ""


def test_with_secret_key_it_starts_with_that_key():
    child = _setup_and_print(
        "settings.SECRET_KEY, settings.SECRET_KEY_IS_DEVELOPMENT", CLEAN, {"SECRET_KEY": STRONG_KEY}
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [STRONG_KEY, "False"]


@pytest.mark.parametrize(
    "env",
    [{"DATABASE_URL": ""}, {"DEBUG": "true"}],  # own database: `make run`, manage.py by hand
    ids=["own-database", "debug"],
)
def test_a_developers_machine_gets_a_random_key_of_its_own_and_check_deploy_fails_on_it(env, tmp_path):
    env = {**CLEAN, **env, "SHOP_DATA_DIR": str(tmp_path)}
    first = _setup_and_print("settings.SECRET_KEY, settings.SECRET_KEY_IS_DEVELOPMENT", env)
    again = _setup_and_print("settings.SECRET_KEY", env)

    assert first.returncode == 0, first.stderr
    key, development = first.stdout.split()
    key_file = tmp_path / "secret-key.txt"
    assert (key, development) == (key_file.read_text(), "True")
    assert again.stdout.strip() == key  # one key for every process of the checkout
    assert len(key) >= 50 and stat.S_IMODE(key_file.stat().st_mode) == 0o600

    deploy = _check_deploy(env, HTTPS)
    assert deploy.returncode != 0
    assert "config.E001" in deploy.stderr


def test_the_development_key_file_is_never_readable_by_other_users(tmp_path):
    program = (
        "import django; django.setup()\n"
        "from pathlib import Path\n"
        "from config import local\n"
        "from devtools.testing import files_open_to_others\n"
        f"with files_open_to_others(Path({str(tmp_path)!r})) as exposed:\n"
        "    local.development_secret_key()\n"
        "print(sorted(exposed))"
    )
    child = _child(["-c", program], {"SHOP_TESTING": "1", "SHOP_DATA_DIR": str(tmp_path)})  # tests make no key

    assert (child.returncode, child.stdout.strip()) == (0, "[]"), child.stderr
    assert stat.S_IMODE((tmp_path / "secret-key.txt").stat().st_mode) == 0o600


def test_tests_start_without_a_key_and_check_deploy_fails_on_theirs():
    child = _setup_and_print("settings.SECRET_KEY_IS_DEVELOPMENT", CLEAN, {"SHOP_TESTING": "1"})
    assert (child.returncode, child.stdout.strip()) == (0, "True"), child.stderr
    deploy = _check_deploy(CLEAN, {"SHOP_TESTING": "1"}, HTTPS)
    assert deploy.returncode != 0 and "config.E001" in deploy.stderr


def test_check_deploy_is_clean_once_the_key_https_and_metrics_settings_are_set():
    child = _check_deploy(CLEAN, {"SECRET_KEY": STRONG_KEY}, HTTPS, METRICS)
    assert child.returncode == 0, child.stderr
    assert "System check identified no issues" in child.stdout
    assert child.stderr == ""

    open_metrics = _check_deploy(CLEAN, {"SECRET_KEY": STRONG_KEY}, HTTPS)  # a warning, not a refusal
    assert open_metrics.returncode == 0 and "config.W003" in open_metrics.stderr


def test_https_settings_default_to_plain_http_and_follow_the_environment():
    expression = (
        "settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, "
        "settings.SECURE_HSTS_SECONDS, settings.SECURE_PROXY_SSL_HEADER"
    )
    keyed = {**CLEAN, "SECRET_KEY": STRONG_KEY}
    default = _setup_and_print(expression, keyed)
    configured = _setup_and_print(expression, keyed, HTTPS)
    cookies_off = _setup_and_print(expression, keyed, HTTPS, {"CSRF_COOKIE_SECURE": "false"})
    bad_header = _setup_and_print(expression, keyed, {"SECURE_PROXY_SSL_HEADER": "X-Proto: https"})

    assert default.stdout.strip() == "False False False 0 None", default.stderr
    assert configured.stdout.strip() == "True True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https')"
    assert cookies_off.stdout.strip() == "True True False 31536000 ('HTTP_X_FORWARDED_PROTO', 'https')"
    assert bad_header.returncode != 0 and "SECURE_PROXY_SSL_HEADER='X-Proto: https'" in bad_header.stderr


def test_https_settings_reach_the_responses(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    plain = client.get("/healthz")
    proxied = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})

    assert plain.status_code == 301 and plain["Location"] == "https://testserver/healthz"
    assert proxied.status_code == 200 and proxied["Strict-Transport-Security"] == "max-age=3600"


def test_the_projects_redis_never_evicts_and_check_deploy_refuses_one_that_does(tmp_path):
    port = free_port()
    started = _child(
        ["-m", "devtools.devservers", "start"],
        # Redis only (a DATABASE_URL is set), on a port and in a directory of its own
        {"SHOP_REDIS_PORT": str(port), "SHOP_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres://unused/x"},
        {"REDIS_URL": ""},
    )
    assert started.returncode == 0, started.stderr
    password = (tmp_path / "redis-password.txt").read_text().strip()
    server = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        assert server.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        env = {**CLEAN, "SECRET_KEY": STRONG_KEY, **HTTPS, "REDIS_URL": f"redis://:{password}@127.0.0.1:{port}/0"}
        assert _check_deploy(env).returncode == 0

        server.config_set("maxmemory-policy", "allkeys-lru")
        evicting = _check_deploy(env)
        assert evicting.returncode != 0
        assert "config.E002" in evicting.stderr and "allkeys-lru" in evicting.stderr
    finally:
        server.shutdown(nosave=True)

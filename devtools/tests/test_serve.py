"""`make run`'s start-up (devtools/serve.py): what it sets up once and what it leaves alone."""

import os
import signal
import stat
import sys

import pytest
from rest_framework.test import APIClient

from accounts.development import development_password, development_password_give, development_password_holders
from accounts.models import User
from devtools import serve
from devtools.testing import files_open_to_others, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def password_file(tmp_path, monkeypatch):
    path = tmp_path / "admin-password.txt"
    monkeypatch.setattr(serve, "ADMIN_PASSWORD_FILE", path)
    return path


def test_the_admin_is_created_once_with_the_generated_password(password_file, capsys):
    serve._ensure_admin()

    first = password_file.read_text().strip()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(first)
    assert f"password '{first}'" in capsys.readouterr().out


def test_the_admin_password_file_is_never_readable_by_other_users(password_file):
    with files_open_to_others(password_file.parent) as exposed:
        serve._ensure_admin()

    assert exposed == set()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600


def test_a_password_changed_in_the_admin_survives_the_next_start(password_file, capsys):
    serve._ensure_admin()
    admin = User.objects.get(username="admin")
    admin.set_password("chosen by the operator")
    admin.save()
    capsys.readouterr()

    serve._ensure_admin()

    assert User.objects.get(username="admin").check_password("chosen by the operator")
    out = capsys.readouterr().out
    assert "password as changed in the admin" in out and password_file.read_text().strip() not in out


def _alive(process) -> bool:
    return process.poll() is None


def test_a_helper_that_dies_is_started_again_and_one_that_keeps_dying_waits_longer_each_time(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    supervisor = serve.Supervisor({"settler": sleeper}, log_dir=tmp_path / "logs", pid_dir=tmp_path / "run")
    supervisor.YOUNG_SECONDS = 600.0  # every death counts as dying young
    supervisor.start()
    try:
        first = supervisor.processes["settler"]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()

        wait_for(lambda: supervisor.check(), timeout=30, what="the settler started again")

        second = supervisor.processes["settler"]
        assert second.pid != first.pid and _alive(second)
        assert (tmp_path / "run" / "settler.pid").read_text() == str(second.pid)
        assert supervisor.restarts["settler"] == 1
        os.kill(second.pid, signal.SIGKILL)
        second.wait()
        assert supervisor.check() == []  # dying young again: a longer pause first
        assert supervisor._pause["settler"] == 2.0
    finally:
        supervisor.stop()

    assert not _alive(supervisor.processes["settler"])
    assert not (tmp_path / "run" / "settler.pid").exists()


def test_the_seeded_customers_get_the_development_password_hashed_and_make_run_prints_it(capsys):
    seeded = [User.objects.create(id=i, username=f"user{i}", password="!") for i in (1, 2)]
    own = User.objects.create(id=3, username="user3")
    own.set_password("chosen by the customer")
    own.save()
    staff = User.objects.create(id=4, username="clerk", password="!", is_staff=True)
    elsewhere = User.objects.create(id=2_000_000, username="api-made", password="!")

    serve._give_customers_the_development_password()

    password = development_password()
    out = capsys.readouterr().out
    assert f"password '{password}', given now" in out and "any of the 2 seeded customers" in out
    for user in seeded:
        stored = User.objects.get(pk=user.pk).password
        assert stored.startswith("pbkdf2_sha256$") and password not in stored  # a hash, never the password
        assert User.objects.get(pk=user.pk).check_password(password)
    assert User.objects.get(pk=own.pk).check_password("chosen by the customer")
    assert {User.objects.get(pk=u.pk).password for u in (staff, elsewhere)} == {"!"}

    serve._give_customers_the_development_password()  # the next `make run`: printed again, nothing changed
    again = capsys.readouterr().out
    assert f"password '{password}'" in again and "given now" not in again


def test_signing_in_with_the_development_password_keeps_its_hash_for_the_deploy_check():
    """Django re-salts a weak salt at the first login; this one's is long enough to stay."""
    User.objects.create(id=7, username="user7", password="!")
    development_password_give(user_ids_below=1_000_000)
    before = User.objects.get(pk=7).password

    answer = APIClient().post(
        "/api/v1/auth/token", {"username": "user7", "password": development_password()}, format="json"
    )

    assert answer.status_code == 201
    assert User.objects.get(pk=7).password == before and development_password_holders() == 1

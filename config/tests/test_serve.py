"""`make run`'s start-up (config/serve.py): what it sets up once and what it leaves alone."""

import stat

import pytest

from accounts.models import User
from config import serve
from config.testing import files_open_to_others

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

"""WEB_SERVER picks the HTTP server and its command line (config/web_server.py)."""

import pytest

from config import web_server


def test_gunicorn_is_the_default_with_its_configuration_file(monkeypatch):
    monkeypatch.delenv("WEB_SERVER", raising=False)

    line = web_server.command("127.0.0.1:8080")

    assert line[1:4] == ["-m", "gunicorn", "config.wsgi"] and line[-2:] == ["--bind", "127.0.0.1:8080"]


def test_granian_runs_the_application_on_one_thread_per_worker(monkeypatch):
    monkeypatch.setenv("WEB_SERVER", "granian")
    monkeypatch.setenv("GRANIAN_WORKERS", "3")

    line = web_server.command("10.0.0.2:8089")

    assert line[1:3] == ["-m", "granian"] and line[-1] == "config.wsgi:application"
    options = dict(zip(line[3::2], line[4::2], strict=False))
    assert options["--host"] == "10.0.0.2" and options["--port"] == "8089"
    assert line[line.index("--workers") + 1] == "3" and line[line.index("--blocking-threads") + 1] == "1"


def test_an_unknown_server_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("WEB_SERVER", "uwsgi")

    with pytest.raises(ValueError, match="WEB_SERVER='uwsgi': one of gunicorn, granian"):
        web_server.command("127.0.0.1:8080")

"""A revoked token is refused by every gunicorn worker at once: the revocation deleted its entry
in the Redis token map before it answered, and no worker remembers a token.

Real gunicorn, two sync workers, on this test's database and Redis. Which worker answered is
read from the access log (`%(p)s`: the worker's pid), so the test knows both accepted the token
before the revocation and both refused it in the first round after.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings

from accounts.services import token_create
from devtools.testing import free_port, make_user
from loadtest import server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKERS = 2


def request(base_url: str, key: str, method: str = "GET") -> int:
    path = "/api/v1/auth/token" if method == "DELETE" else "/api/v1/accounts/me"
    req = urllib.request.Request(base_url + path, method=method, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def answers_by_worker(log: Path, *, after: int) -> dict[str, set[str]]:
    """pid -> statuses of /api/v1/accounts/me in the access log from character `after` on."""
    seen: dict[str, set[str]] = {}
    for pid, status in re.findall(r"^<(\d+)> (\d{3}) /api/v1/accounts/me$", log.read_text()[after:], re.M):
        seen.setdefault(pid, set()).add(status)
    return seen


def until_every_worker_answered(base_url: str, key: str, log: Path, *, after: int) -> dict[str, set[str]]:
    """Send requests four at a time until both workers have answered some (bounded)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(100):
            list(pool.map(lambda _: request(base_url, key), range(8)))
            seen = answers_by_worker(log, after=after)
            if len(seen) == WORKERS:
                return seen
    raise AssertionError(f"not every worker answered: {seen}")


def test_a_revoked_token_is_refused_by_every_worker_at_once(tmp_path, monkeypatch):
    key = token_create(user=make_user()).key
    access_log = tmp_path / "access.log"
    access_log.touch()
    monkeypatch.setenv("GUNICORN_WORKERS", str(WORKERS))
    monkeypatch.setenv("GUNICORN_ACCESSLOG", str(access_log))
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--access-logformat '%(p)s %(s)s %(U)s'")

    log_path = Path(settings.BASE_DIR) / "test-output" / "token-workers-gunicorn.log"
    log_path.parent.mkdir(exist_ok=True)
    with server.web_server(strategy="new", port=free_port(), log_path=log_path) as served:
        before = until_every_worker_answered(served.base_url, key, access_log, after=0)
        assert all(statuses == {"200"} for statuses in before.values()), before  # both accept it

        assert request(served.base_url, key, "DELETE") == 204  # answered by one of the two
        after = until_every_worker_answered(served.base_url, key, access_log, after=len(access_log.read_text()))

    assert set(after) == set(before)
    assert all(statuses == {"401"} for statuses in after.values()), after

"""Every answer a client can provoke at the HTTP level is a JSON error with a stable code.

Against each real web server WEB_SERVER can choose (config/web_server.py: gunicorn with one sync
worker, granian with one worker), on this test's database, with raw sockets: what gunicorn
answers itself and what Django answers must look the same; granian's own answers carry no page.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

import pytest
from django.conf import settings

from accounts.services import token_create
from config import gunicorn_errors, web_server
from devtools.testing import free_port, make_user
from kernel.errors import ErrorCode
from loadtest.server import web_server as running_web_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@dataclass(frozen=True)
class Served:
    name: str  # WEB_SERVER: gunicorn or granian
    port: int


@pytest.fixture(scope="module", params=web_server.SERVERS)
def server(request, django_db_setup, django_db_blocker, tmp_path_factory):
    """Each web server WEB_SERVER can choose, with one worker on one thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WEB_SERVER", request.param)
        patch.setenv("GUNICORN_WORKERS", "1")
        patch.setenv("GUNICORN_THREADS", "1")
        patch.setenv("GRANIAN_WORKERS", "1")
        with django_db_blocker.unblock():
            log = tmp_path_factory.mktemp(request.param) / "server.log"
            with running_web_server(strategy="new", port=free_port(), log_path=log) as served:
                yield Served(request.param, int(served.base_url.rsplit(":", 1)[1]))


def _exchange(server: Served, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` whole (raw bytes, as any client may), then read the answer, as HTTP
    clients do. The send buffer is kept small, as a real network's is against a 1 MB body: on
    loopback the kernel would otherwise take the whole body at once and hide a server that
    answers and closes without reading it (the client's send then fails with a reset)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def _request(method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _error_code(status: int, headers: dict[str, str], body: bytes, expected_status: int) -> str:
    assert status == expected_status, body[:300]
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    return error["code"]


def test_a_10_kb_idempotency_key_gets_the_applications_json_431(server):
    request = _request("POST", "/api/v1/orders", headers={"Idempotency-Key": "k" * 10_000}, body=b"{}")
    status, headers, body = _exchange(server, request)
    assert _error_code(status, headers, body, 431) == "HEADER_TOO_LARGE"
    # Django's answer: through the middleware, which names the header and tags a request id.
    assert json.loads(body)["error"]["message"].startswith("Header Idempotency-Key is larger than")
    assert "x-request-id" in headers


def test_a_header_past_the_servers_own_limit_gets_a_json_431(server):
    request = _request("GET", "/api/v1/products", headers={"X-Padding": "p" * 40_000})
    status, headers, body = _exchange(server, request)
    assert _error_code(status, headers, body, 431) == "HEADER_TOO_LARGE"
    if server.name == "gunicorn":
        # gunicorn's answer (config/gunicorn_errors.py): it closes, and Django never tagged it.
        assert "x-request-id" not in headers and headers["connection"] == "close"
        assert not json.loads(body)["error"]["message"].startswith("Header ")
    else:
        # granian reads headers up to its buffer (400 KB): the application's own answer.
        assert "x-request-id" in headers and json.loads(body)["error"]["message"].startswith("Header X-Padding")


def test_a_malformed_request_line_gets_a_400_and_never_an_html_page(server):
    status, headers, body = _exchange(server, b"GET /api/v1/products?a=1 & HTTP/1.1\r\nHost: x\r\n\r\n")
    if server.name == "gunicorn":
        assert _error_code(status, headers, body, 400) == "MALFORMED_REQUEST"
    else:
        # granian answers what cannot be parsed itself, with no body at all (config/web_server.py).
        assert (status, body, headers["connection"]) == (400, b"", "close")


def test_an_order_and_the_next_request_share_one_connection_when_the_server_keeps_it_alive(server):
    token = token_create(user=make_user()).key
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(2):
            connection.request("GET", "/api/v1/products", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
        # http.client reconnects by itself once the server has closed: the same socket means it had not.
        first_socket = connection.sock
        connection.request("GET", "/api/v1/products", headers={"Authorization": f"Bearer {token}"})
        connection.getresponse().read()
        kept_alive = connection.sock is first_socket and first_socket is not None
    finally:
        connection.close()
    assert kept_alive == (server.name == "granian")


def test_a_1_mb_body_is_answered_413_every_time_never_a_reset(server):
    request = _request("POST", "/api/v1/orders", headers={"Content-Type": "application/json"}, body=b"x" * 1_000_000)
    codes = [_error_code(*_exchange(server, request), 413) for _ in range(20)]
    assert codes == ["PAYLOAD_TOO_LARGE"] * 20


def test_a_body_past_the_drain_bound_is_refused_before_it_is_sent(server):
    head = (
        f"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {settings.MAX_DRAINED_REQUEST_BYTES + 1}\r\n\r\n"
    ).encode()
    assert _error_code(*_exchange(server, head), 413) == "PAYLOAD_TOO_LARGE"


def test_unknown_api_path_is_a_json_404_and_a_wrong_method_a_json_405(server):
    token = token_create(user=make_user()).key
    assert _error_code(*_exchange(server, _request("GET", "/api/v1/no-such-thing")), 404) == "NOT_FOUND"
    wrong_method = _request("DELETE", "/api/v1/products", headers={"Authorization": f"Bearer {token}"})
    assert _error_code(*_exchange(server, wrong_method), 405) == "METHOD_NOT_ALLOWED"


def test_gunicorns_codes_are_among_the_apis_stable_codes():
    assert set(gunicorn_errors.CODES.values()) <= set(ErrorCode)

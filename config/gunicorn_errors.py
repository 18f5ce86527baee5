"""gunicorn's own error answers in the API's JSON error shape.

gunicorn answers some requests before Django sees them (a malformed request line, a header past
limit_request_field_size, an unknown transfer coding...) with a small HTML page written by
`gunicorn.util.write_error`, and has no setting to change that page (benoitc/gunicorn#993).
gunicorn.conf.py's post_worker_init hook puts `write_json_error` in its place in each worker:
the same status and reason, a JSON body. No Django here: gunicorn's own errors come before it.
A test checks it against a real gunicorn (config/tests/test_http_errors.py), so an upgrade that
moves the writer shows up there; until then such answers would be HTML again, nothing worse.
"""

from __future__ import annotations

import json

# The stable codes of kernel.errors.ErrorCode (a test checks that they are among them).
CODES = {
    400: "MALFORMED_REQUEST",
    403: "FORBIDDEN",
    414: "URI_TOO_LONG",
    417: "EXPECTATION_FAILED",
    431: "HEADER_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
}
_MAX_MESSAGE = 200  # gunicorn's message quotes the request; a short prefix is enough to debug by


def error_response(status_int: int, reason: str, mesg: str) -> bytes:
    code = CODES.get(status_int, "MALFORMED_REQUEST" if status_int < 500 else "INTERNAL_ERROR")
    message = (mesg or reason)[:_MAX_MESSAGE]
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, error_response(status_int, reason, mesg))


def install() -> None:
    from gunicorn import util

    util.write_error = write_json_error

"""What every request goes through first: its size bounds, and the Content-Security-Policy.

Bound what a request may send, and answer every breach with the API's JSON error.

A body over its limit is refused before anything parses it (a JSON order is well under 64 KB;
other pages keep Django's DATA_UPLOAD_MAX_MEMORY_SIZE). The refusal reads and drops the body
first, up to MAX_DRAINED_REQUEST_BYTES: a server that answers and closes while the client is
still sending leaves unread bytes in the socket, the kernel then resets the connection, and the
client may never see the 413. Past that bound the 413 goes out unread (a client sending more
than 10 MB after being told no may see a reset: reading it all would cost more than it is worth).

A header past MAX_REQUEST_HEADER_BYTES is refused with 431. gunicorn lets headers up to
limit_request_field_size through (config/gunicorn.conf.py), above this bound, so that it is this
JSON answer a client sees; what gunicorn refuses itself is answered in JSON too
(config/gunicorn_errors.py).
"""

from csp.constants import HEADER as CSP_HEADER
from csp.constants import NONE as CSP_NONE
from csp.middleware import CSPMiddleware
from csp.utils import build_policy
from django.conf import settings

from kernel.errors import ErrorCode, json_error_response

_DRAIN_CHUNK = 64 * 1024


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.api_limit = settings.MAX_REQUEST_BYTES
        self.page_limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        self.drain_limit = settings.MAX_DRAINED_REQUEST_BYTES
        self.header_limit = settings.MAX_REQUEST_HEADER_BYTES

    def __call__(self, request):
        meta = request.META
        for name, value in meta.items():
            if name.startswith("HTTP_") and len(value) > self.header_limit:
                header = name[5:].replace("_", "-").title()
                return json_error_response(
                    ErrorCode.HEADER_TOO_LARGE, f"Header {header} is larger than {self.header_limit} bytes.", 431
                )
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return json_error_response(ErrorCode.VALIDATION_ERROR, "Content-Length is not a number.", 400)
        limit = self.api_limit if request.path.startswith("/api/") else self.page_limit
        if limit is not None and length > limit:
            if length <= self.drain_limit:
                _drop_body(meta["wsgi.input"], length)
            return json_error_response(ErrorCode.PAYLOAD_TOO_LARGE, f"Request body is larger than {limit} bytes.", 413)
        return self.get_response(request)


def _drop_body(stream, length: int) -> None:
    """Read `length` bytes and forget them (or fewer, if the client stops sending early)."""
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(_DRAIN_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware for pages (settings.CONTENT_SECURITY_POLICY, per-view changes with
    its decorators); the JSON API gets one policy that allows nothing, built once: JSON is never
    rendered as a page, and building the policy per response would cost each order ~20 us."""

    API_PREFIX = "/api/v1/"

    def __init__(self, get_response):
        super().__init__(get_response)
        self.api_policy = build_policy(config={"default-src": [CSP_NONE], "frame-ancestors": [CSP_NONE]})

    def process_request(self, request):
        if not request.path.startswith(self.API_PREFIX):
            super().process_request(request)

    def process_response(self, request, response):
        if request.path.startswith(self.API_PREFIX):
            response.headers.setdefault(CSP_HEADER, self.api_policy)
            return response
        return super().process_response(request, response)

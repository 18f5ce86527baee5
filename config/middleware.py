"""Reject oversized bodies before anything reads them (a JSON order is well under 64 KB)."""

from django.conf import settings

from config.errors import ErrorCode, json_error_response


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.limit = settings.MAX_REQUEST_BYTES

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return json_error_response(ErrorCode.VALIDATION_ERROR, "Content-Length is not a number.", 400)
            if length > self.limit:
                return json_error_response(
                    ErrorCode.PAYLOAD_TOO_LARGE, f"Request body is larger than {self.limit} bytes.", 413
                )
        return self.get_response(request)

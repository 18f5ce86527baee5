"""One error shape for the whole API: {"error": {"code", "message", "details"}}.

Services raise `DomainError` subclasses (each app lists its own in `errors.py`); DRF and
infrastructure failures are mapped here too, so no view ever builds error JSON.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import redis
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    HEADER_TOO_LARGE = "HEADER_TOO_LARGE"
    # Answered by gunicorn before Django sees the request (config/gunicorn_errors.py).
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    URI_TOO_LONG = "URI_TOO_LONG"
    EXPECTATION_FAILED = "EXPECTATION_FAILED"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    CONFLICT = "CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class DomainError(Exception):
    """A rule a request broke: carries its stable code, HTTP status and details."""

    code: str = ErrorCode.CONFLICT
    status_code: int = status.HTTP_409_CONFLICT
    default_message: str = "The request conflicts with the current state."
    retry_after: int | None = None  # seconds, sent as Retry-After: the request may simply be repeated then
    admin_only: bool = False  # raised only by what the admin calls: no API operation answers it
    # Kept as an Idempotency-Key's answer and given again to every retry with the key
    # (orders/idempotency.py): a refusal once the order's stock was reserved, for its money or
    # its coupon, is the business's word on the request. Refusals before it (nothing reserved,
    # nothing changed) and transient failures are not kept, so a retry after one is a real retry.
    replayable: bool = False

    def __init__(
        self, message: str | None = None, *, details: dict[str, Any] | None = None, retry_after: int | None = None
    ):
        self.message = message or self.default_message
        self.details = details or {}
        if retry_after is not None:
            self.retry_after = retry_after
        super().__init__(self.message)


class ServiceUnavailable(DomainError):
    code = ErrorCode.SERVICE_UNAVAILABLE
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "A backing service is unavailable; nothing was changed. Try again shortly."
    retry_after = 1


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


_DRF_CODES: dict[type[Exception], str] = {
    drf_exceptions.ParseError: ErrorCode.VALIDATION_ERROR,
    drf_exceptions.ValidationError: ErrorCode.VALIDATION_ERROR,
    drf_exceptions.NotAuthenticated: ErrorCode.UNAUTHENTICATED,
    drf_exceptions.AuthenticationFailed: ErrorCode.UNAUTHENTICATED,
    drf_exceptions.PermissionDenied: ErrorCode.FORBIDDEN,
    drf_exceptions.NotFound: ErrorCode.NOT_FOUND,
    drf_exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    drf_exceptions.NotAcceptable: ErrorCode.NOT_ACCEPTABLE,
    drf_exceptions.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    drf_exceptions.Throttled: ErrorCode.RATE_LIMITED,
}


def _drf_error(exc: drf_exceptions.APIException) -> Response:
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), ErrorCode.VALIDATION_ERROR)
    if isinstance(exc, drf_exceptions.ValidationError):
        message, details = "The request is not valid.", {"fields": exc.detail}
    else:
        message, details = str(exc.detail), {}
    headers = {}
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
        exc.status_code = status.HTTP_401_UNAUTHORIZED
    return Response(error_body(code, message, details), status=exc.status_code, headers=headers)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _error_response(exc, context)
    if response is not None:
        # Counted by the metrics middleware (ops/metrics_api.py) under this stable code.
        response.error_code = response.data["error"]["code"]
    return response


# A Redis that does not answer, or (a Redis Cluster in failover) does not serve the slot yet.
REDIS_AWAY = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.TryAgainError,
)
# A backing service away: 503, the client retries.
_SERVICE_AWAY = (OperationalError, InterfaceError, *REDIS_AWAY)


def _error_response(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code, headers=headers)
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        return Response(error_body(ErrorCode.NOT_FOUND, "Not found."), status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        return Response(error_body(ErrorCode.FORBIDDEN, "Forbidden."), status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, drf_exceptions.APIException):
        return _drf_error(exc)
    if isinstance(exc, _SERVICE_AWAY):
        logger.warning("backing service unavailable: %s: %s", type(exc).__name__, exc)
        return _error_response(ServiceUnavailable(), context)
    if isinstance(exc, DatabaseError):
        logger.exception("database error on %s", context.get("request") and context["request"].path)
        # A 503 like any other (Retry-After too, as the schema says of every 503).
        return _error_response(ServiceUnavailable("The database refused the request; nothing was changed."), context)
    return None


def json_error_response(code: str, message: str, status_code: int) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=status_code)
    response.error_code = str(code)
    return response


def handler404(request, exception=None):
    return json_error_response(ErrorCode.NOT_FOUND, "No such resource.", 404)


def handler500(request):
    return json_error_response(ErrorCode.INTERNAL_ERROR, "Internal error; it has been logged.", 500)


def handler400(request, exception=None):
    return json_error_response(ErrorCode.VALIDATION_ERROR, "Bad request.", 400)


def handler403(request, exception=None):
    return json_error_response(ErrorCode.FORBIDDEN, "Forbidden.", 403)

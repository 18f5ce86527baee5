"""Request ids: `X-Request-ID` from the client (when it is safe to log) or made here, answered
back, and put on every log record written while the request runs (a contextvar, read by a
logging filter). `LOG_FORMAT=json` writes each record as one line of JSON.

The settler works on orders, not requests: the web process logs "order N accepted" with the
request id, and the settler logs the order ids of each batch it paid (orders/settlement.py),
so an order's id leads from one log to the other.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from datetime import UTC, datetime

import orjson

HEADER = "X-Request-ID"
_META_KEY = "HTTP_X_REQUEST_ID"
# Ids from load balancers and tracers (uuids, hex, "Root=1-..."): short, and nothing that
# could forge a log line or a header.
_SAFE = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")
NO_REQUEST = "-"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=NO_REQUEST)


def current() -> str:
    return _current.get()


def accepted_or_new(value: str | None) -> str:
    """The client's id if it is safe (at most 128 characters of [A-Za-z0-9._:=+/-]), else a new one."""
    if value and _SAFE.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Outermost: every answer carries the id, and every log line of the request names it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = accepted_or_new(request.META.get(_META_KEY))
        request.request_id = request_id
        token = _current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[HEADER] = request_id
        return response


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on every record (NO_REQUEST outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, process (and
    the traceback as `exception` when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_REQUEST),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

"""The OpenAPI schema (/api/schema) documents every answer an operation gives, errors included.

drf-spectacular documents the answers a view declares. This AutoSchema adds each operation's
error answers, all in the one error shape (kernel/errors.py), from two sources:

- the domain errors the view method declares with `@raises(...)`: each class carries its
  status, its code, its default message and whether its answer carries Retry-After;
- what the framework answers for any operation of its kind (`framework_answers`): 401 with
  WWW-Authenticate without a valid bearer token, 400, 413 and 415 for a body that is not JSON
  of the documented shape, size and type, 404 for an id in the path that names nothing or a
  page past the last, 406 for an Accept header that excludes JSON, 431 for a header over
  MAX_REQUEST_HEADER_BYTES, 503 with Retry-After while PostgreSQL or Redis does not answer.

Each status is documented once: its description lists the codes it may carry, with one example
body per error. What gunicorn answers for a request it cannot parse (config/gunicorn_errors.py)
is no operation's answer; docs/api.md lists it.

A fuzzer (schemathesis) holds the schema to a live server's answers, and a plain test holds it
to its key facts: config/tests/test_schema_fuzz.py and config/tests/test_schema.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core import validators
from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from kernel.errors import DomainError, ErrorCode, ServiceUnavailable, error_body

# DRF refuses a NUL character in every CharField (PostgreSQL cannot store one); the schema says so.
NO_NUL_PATTERN = "^[^\\u0000]*$"


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable: clients branch on it. Each answer lists the codes it may carry.")
    message = serializers.CharField(help_text="For people; it may change.")
    details = serializers.DictField(help_text="What the code needs said (`fields`, `productId`, ...); often empty.")


class ErrorSerializer(serializers.Serializer):
    """The one error shape: `{"error": {"code", "message", "details"}}`."""

    error = ErrorDetailSerializer()


@dataclass(frozen=True)
class ErrorAnswer:
    """One error answer as the schema documents it."""

    name: str  # its example's key: the error class, or what the framework refused
    status: int
    code: str
    message: str
    retry_after: bool = False  # sends Retry-After
    authenticate: bool = False  # sends WWW-Authenticate

    @classmethod
    def of(cls, error: type[DomainError]) -> ErrorAnswer:
        return cls(
            error.__name__, error.status_code, str(error.code), error.default_message, error.retry_after is not None
        )


def raises(*errors: type[DomainError]) -> Callable:
    """Name the domain errors a view method can raise (its service's and its own): the schema
    documents the answer of each."""

    def mark(method: Callable) -> Callable:
        method.raises = errors
        return method

    return mark


def framework_answers(*, authenticated: bool, body: bool, path_ids: bool, paginated: bool) -> list[ErrorAnswer]:
    """What DRF, the middleware and the one error handler answer for an operation of this kind."""
    answers = []
    if authenticated:
        answers += [
            ErrorAnswer("NotAuthenticated", 401, ErrorCode.UNAUTHENTICATED,
                        "Authentication credentials were not provided.", authenticate=True),
            ErrorAnswer("AuthenticationFailed", 401, ErrorCode.UNAUTHENTICATED, "Invalid or expired token.",
                        authenticate=True),
        ]  # fmt: skip
    if body:
        answers += [
            ErrorAnswer("ValidationError", 400, ErrorCode.VALIDATION_ERROR, "The request is not valid."),
            ErrorAnswer("ParseError", 400, ErrorCode.VALIDATION_ERROR, "Malformed JSON: ..."),
            ErrorAnswer("PayloadTooLarge", 413, ErrorCode.PAYLOAD_TOO_LARGE,
                        f"Request body is larger than {settings.MAX_REQUEST_BYTES} bytes."),
            ErrorAnswer("UnsupportedMediaType", 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                        'Unsupported media type "text/plain" in request.'),
        ]  # fmt: skip
    if path_ids:
        answers.append(ErrorAnswer("NoSuchResource", 404, ErrorCode.NOT_FOUND, "No such resource."))
    if paginated:
        answers.append(ErrorAnswer("InvalidPage", 404, ErrorCode.NOT_FOUND, "Invalid page."))
    return [
        *answers,
        ErrorAnswer("NotAcceptable", 406, ErrorCode.NOT_ACCEPTABLE, "Could not satisfy the request Accept header."),
        ErrorAnswer("HeaderTooLarge", 431, ErrorCode.HEADER_TOO_LARGE,
                    f"Header X-Example is larger than {settings.MAX_REQUEST_HEADER_BYTES} bytes."),
        ErrorAnswer.of(ServiceUnavailable),
    ]  # fmt: skip


class AutoSchema(openapi.AutoSchema):
    def error_answers(self) -> list[ErrorAnswer]:
        """Every error answer of this operation: the framework's for its kind, then its own."""
        answers = framework_answers(
            authenticated=not any(isinstance(p, AllowAny) for p in self.view.get_permissions()),
            body=self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None,
            path_ids="{" in self.path,
            paginated=self.method == "GET" and self._is_list_view() and self._get_paginator() is not None,
        )
        handler = getattr(self.view, self.method.lower())
        answers += [ErrorAnswer.of(error) for error in getattr(handler, "raises", ())]
        by_name = {answer.name: answer for answer in answers}  # a subclass and its base stay apart
        return list(by_name.values())

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        by_status: dict[int, list[ErrorAnswer]] = {}
        for answer in self.error_answers():
            by_status.setdefault(answer.status, []).append(answer)
        for status, answers in sorted(by_status.items()):
            if str(status) in responses:
                raise ValueError(f"{self.method} {self.path}: name the errors of {status} with @raises")
            responses[str(status)] = self._error_response(status, answers)
        return responses

    def _error_response(self, status: int, answers: list[ErrorAnswer]) -> dict:
        codes = "\n".join(f"- `{answer.code}`: {answer.message}" for answer in answers)
        examples = [
            OpenApiExample(answer.name, value=error_body(answer.code, answer.message), status_codes=[status])
            for answer in answers
        ]
        response = self._get_response_for_code(
            OpenApiResponse(ErrorSerializer, description=codes, examples=examples), str(status)
        )
        headers = {}
        if all(answer.retry_after for answer in answers):
            headers["Retry-After"] = {
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
                "description": "Seconds after which the same request may be sent again.",
            }
        if all(answer.authenticate for answer in answers):
            headers["WWW-Authenticate"] = {
                "schema": {"type": "string", "enum": ['Bearer realm="api"']},
                "required": True,
                "description": "How to authenticate: a bearer token.",
            }
        if headers:
            response["headers"] = {**response.get("headers", {}), **headers}
        return response

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.ListSerializer) and schema and schema.get("type") == "array":
            # A nested list's length is checked by DRF itself, not by validators spectacular reads.
            fewest = max(field.min_length or 0, 0 if field.allow_empty else 1)
            if fewest:
                schema["minItems"] = fewest
            if field.max_length is not None:
                schema["maxItems"] = field.max_length
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request":
            for name, field in serializer.fields.items():
                no_nul = any(isinstance(v, validators.ProhibitNullCharactersValidator) for v in field.validators)
                if no_nul and schema["properties"].get(name, {}).get("type") == "string":
                    schema["properties"][name].setdefault("pattern", NO_NUL_PATTERN)
        return schema

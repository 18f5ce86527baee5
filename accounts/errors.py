from enum import StrEnum

from rest_framework import status

from config.errors import DomainError, ErrorCode


class AccountErrorCode(StrEnum):
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    CONFLICT = ErrorCode.CONFLICT
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    RATE_LIMITED = ErrorCode.RATE_LIMITED


class InsufficientBalance(DomainError):
    code = AccountErrorCode.INSUFFICIENT_BALANCE
    status_code = status.HTTP_409_CONFLICT
    default_message = "The balance does not cover the amount."


class BalanceConflict(DomainError):
    """The optimistic lock lost every one of its bounded attempts."""

    code = AccountErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = "The balance changed concurrently too often; nothing was charged. Try again."


class InvalidCredentials(DomainError):
    """A login that did not match an active user; which part was wrong is not said."""

    code = AccountErrorCode.INVALID_CREDENTIALS
    status_code = status.HTTP_401_UNAUTHORIZED
    default_message = "The username and password do not match an active account."


class LoginRateLimited(DomainError):
    code = AccountErrorCode.RATE_LIMITED
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    retry_after = 1  # the login limit says when its window ends
    default_message = "Too many login attempts; try again after Retry-After seconds."

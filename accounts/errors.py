from enum import StrEnum

from rest_framework import status

from kernel.errors import DomainError, ErrorCode


class AccountErrorCode(StrEnum):
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    ACCOUNT_MISSING = "ACCOUNT_MISSING"
    CONFLICT = ErrorCode.CONFLICT
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    RATE_LIMITED = ErrorCode.RATE_LIMITED
    ADJUSTMENT_NOT_PENDING = "ADJUSTMENT_NOT_PENDING"
    OWN_ADJUSTMENT = "OWN_ADJUSTMENT"


class InsufficientBalance(DomainError):
    code = AccountErrorCode.INSUFFICIENT_BALANCE
    status_code = status.HTTP_409_CONFLICT
    default_message = "The balance does not cover the amount."
    replayable = True  # refused once the stock was reserved: the key's answer


class AccountMissing(DomainError):
    """The user has no balance to pay from: every user gets one when made (accounts/signals.py),
    so only a row removed by hand leads here. The order fails alone, nothing charged."""

    code = AccountErrorCode.ACCOUNT_MISSING
    status_code = status.HTTP_409_CONFLICT
    default_message = "This user has no account to pay from; nothing was charged."


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


class AdjustmentNotPending(DomainError):
    """The balance adjustment request was approved or rejected already (maybe a moment ago, by
    another admin)."""

    admin_only = True
    code = AccountErrorCode.ADJUSTMENT_NOT_PENDING
    status_code = status.HTTP_409_CONFLICT
    default_message = "This request was decided already; nothing was changed."


class OwnAdjustment(DomainError):
    """An admin approving the credit they asked for: it takes a second admin."""

    admin_only = True
    code = AccountErrorCode.OWN_ADJUSTMENT
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "A credit you asked for needs another admin's approval."

from enum import StrEnum

from rest_framework import status

from config.errors import DomainError, ErrorCode


class AccountErrorCode(StrEnum):
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    CONFLICT = ErrorCode.CONFLICT


class InsufficientBalance(DomainError):
    code = AccountErrorCode.INSUFFICIENT_BALANCE
    status_code = status.HTTP_409_CONFLICT
    default_message = "The balance does not cover the amount."


class BalanceConflict(DomainError):
    """The optimistic lock lost every one of its bounded attempts."""

    code = AccountErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = "The balance changed concurrently too often; nothing was charged. Try again."

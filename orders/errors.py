from enum import StrEnum

from rest_framework import status

from kernel.errors import DomainError, ErrorCode, ServiceUnavailable


class OrderErrorCode(StrEnum):
    PRICE_CHANGED = "PRICE_CHANGED"
    INVALID_STATUS = "INVALID_STATUS"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    TOO_MANY_IDEMPOTENCY_KEYS = "TOO_MANY_IDEMPOTENCY_KEYS"
    TOO_MANY_UNPAID_ORDERS = "TOO_MANY_UNPAID_ORDERS"
    CANCEL_WINDOW_CLOSED = "CANCEL_WINDOW_CLOSED"
    NOT_FOUND = ErrorCode.NOT_FOUND
    FORBIDDEN = ErrorCode.FORBIDDEN


class PriceChanged(DomainError):
    code = OrderErrorCode.PRICE_CHANGED
    status_code = status.HTTP_409_CONFLICT
    default_message = "The price of an item changed; review the current prices and order again."


class OrderNotFound(DomainError):
    code = OrderErrorCode.NOT_FOUND
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "No such order."


class InvalidStatusTransition(DomainError):
    code = OrderErrorCode.INVALID_STATUS
    status_code = status.HTTP_409_CONFLICT
    default_message = "The order cannot make that move from its current status."


class IdempotencyKeyReused(DomainError):
    code = OrderErrorCode.IDEMPOTENCY_KEY_REUSED
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_message = "This Idempotency-Key was already used with a different request body."


class TooManyIdempotencyKeys(DomainError):
    """The caller holds IDEMPOTENCY_KEYS_PER_USER keys already (each kept
    IDEMPOTENCY_KEY_TTL_HOURS): a bound on what one account can make the database keep."""

    code = OrderErrorCode.TOO_MANY_IDEMPOTENCY_KEYS
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    retry_after = 3600  # raised with the time until the caller's oldest key is purged
    default_message = (
        "This account holds too many recent Idempotency-Keys; order without one, or reuse the key of a retry."
    )


class NotYourOrder(DomainError):
    code = OrderErrorCode.FORBIDDEN
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "userId must be the authenticated caller."


class PaymentBacklogFull(ServiceUnavailable):
    default_message = "Payments are running behind; nothing was reserved. Try again after Retry-After seconds."


class OrderOutcomeUnknown(ServiceUnavailable):
    """Redis went away while it ran the intake's script and did not come back in time to say
    whether it had: the one 503 that cannot promise nothing was changed."""

    default_message = (
        "Redis went away while it was accepting the order, which it may have done. Look at your orders "
        "(GET /api/v1/orders) before ordering again, or order with an Idempotency-Key."
    )


class TooManyUnpaidOrders(DomainError):
    """409, not 429: it is the state of the caller's orders, not the rate of its requests, and
    waiting alone does not lift it; a settler paying (or failing) one of them does."""

    code = OrderErrorCode.TOO_MANY_UNPAID_ORDERS
    status_code = status.HTTP_409_CONFLICT
    default_message = "You have too many orders waiting for payment; nothing was reserved."


class CancelWindowClosed(DomainError):
    code = OrderErrorCode.CANCEL_WINDOW_CLOSED
    status_code = status.HTTP_409_CONFLICT
    default_message = "A paid order can no longer be cancelled this long after it was placed."

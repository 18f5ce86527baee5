from enum import StrEnum

from rest_framework import status

from kernel.errors import DomainError, ErrorCode


class InventoryErrorCode(StrEnum):
    OUT_OF_STOCK = "OUT_OF_STOCK"
    PRODUCT_UNAVAILABLE = "PRODUCT_UNAVAILABLE"
    PURCHASE_LIMIT_REACHED = "PURCHASE_LIMIT_REACHED"
    STOCK_TOTAL_TOO_LARGE = "STOCK_TOTAL_TOO_LARGE"
    NOT_FOUND = ErrorCode.NOT_FOUND


class OutOfStock(DomainError):
    code = InventoryErrorCode.OUT_OF_STOCK
    status_code = status.HTTP_409_CONFLICT
    default_message = "Not enough stock for one of the items; nothing was reserved."


class StockTotalTooLarge(DomainError):
    """An addition would take a product's stock past STOCK_TOTAL_MAX (inventory/services.py)."""

    admin_only = True
    code = InventoryErrorCode.STOCK_TOTAL_TOO_LARGE
    status_code = status.HTTP_409_CONFLICT
    default_message = "That would take the product's stock past the most it may hold; nothing was changed."


class ProductNotFound(DomainError):
    code = InventoryErrorCode.NOT_FOUND
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "No such product."


class ProductUnavailable(DomainError):
    code = InventoryErrorCode.PRODUCT_UNAVAILABLE
    status_code = status.HTTP_409_CONFLICT
    default_message = "The product is not on sale."


class ReservationLost(DomainError):
    """Redis no longer holds the reservation (it was reconciled away or Redis lost its data)."""

    code = ErrorCode.SERVICE_UNAVAILABLE
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    retry_after = 1
    default_message = "Stock is being reloaded; nothing was charged. Try again shortly."


class StockNotLoaded(ReservationLost):
    default_message = "Stock is being loaded into Redis; nothing was reserved. Try again shortly."


class PurchaseLimitReached(DomainError):
    """The customer already holds (paid or in flight) what the product's limit allows."""

    code = InventoryErrorCode.PURCHASE_LIMIT_REACHED
    status_code = status.HTTP_409_CONFLICT
    default_message = "This order would take you past the product's limit per customer; nothing was reserved."


class RateLimited(DomainError):
    """An admission counter of the reservation (a rate limit the caller set) is full."""

    code = ErrorCode.RATE_LIMITED
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    retry_after = 1  # the reservation says when the counter's window ends
    default_message = "Too many orders; nothing was reserved. Try again after Retry-After seconds."

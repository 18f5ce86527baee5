from enum import StrEnum

from rest_framework import status

from kernel.errors import DomainError


class CouponErrorCode(StrEnum):
    COUPON_INVALID = "COUPON_INVALID"


class CouponInvalid(DomainError):
    """One code for every reason a coupon does not apply; `details.reason` says which."""

    code = CouponErrorCode.COUPON_INVALID
    status_code = status.HTTP_409_CONFLICT
    default_message = "The coupon cannot be used for this order."
    replayable = True  # refused once the stock was reserved: the key's answer

    def __init__(self, reason: str, message: str | None = None):
        super().__init__(message, details={"reason": reason})

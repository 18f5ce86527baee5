"""What placing an order comes to, and the one place that turns it into an HTTP status.

The service says what happened (PAID, or ACCEPTED for a settler to pay; a replay of an earlier
answer says which of the two it was); `placement_status_code` is the only mapping to 201/202,
used by the view (orders/api.py) and by the Idempotency-Key's stored answer (orders/idempotency.py),
whose rows keep 201/202 as they always have."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from rest_framework import status

from orders.models import Order


class Placement(Enum):
    PAID = "PAID"  # paid in the request: 201
    ACCEPTED = "ACCEPTED"  # recorded PENDING_PAYMENT, a settler pays it: 202


_STATUS_CODES = {Placement.PAID: status.HTTP_201_CREATED, Placement.ACCEPTED: status.HTTP_202_ACCEPTED}
_PLACEMENTS = {code: placement for placement, code in _STATUS_CODES.items()}


def placement_status_code(placement: Placement) -> int:
    """201 for an order paid in the request, 202 for one accepted for a settler to pay."""
    return _STATUS_CODES[placement]


def placement_of_status_code(status_code: int) -> Placement:
    """The placement a stored Idempotency-Key answer (201 or 202) records."""
    return _PLACEMENTS[status_code]


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """An order placed (or, `replayed`, the one an earlier request with the same key placed)."""

    order: Order
    placement: Placement
    replayed: bool = False

    @property
    def status_code(self) -> int:
        return placement_status_code(self.placement)

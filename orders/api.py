import hashlib
import logging

import orjson
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.errors import AccountMissing, BalanceConflict, InsufficientBalance
from coupons.errors import CouponInvalid
from inventory.errors import (
    OutOfStock,
    ProductNotFound,
    ProductUnavailable,
    PurchaseLimitReached,
    RateLimited,
    ReservationLost,
    StockNotLoaded,
)
from inventory.legacy import LockTimeout
from kernel import metrics
from kernel.schema import raises
from orders.errors import (
    CancelWindowClosed,
    IdempotencyKeyReused,
    InvalidStatusTransition,
    NotYourOrder,
    OrderNotFound,
    OrderOutcomeUnknown,
    PaymentBacklogFull,
    PriceChanged,
    TooManyIdempotencyKeys,
    TooManyUnpaidOrders,
)
from orders.idempotency import KeyTakenOver, RequestInProgress
from orders.results import Placement, placement_status_code
from orders.selectors import order_get, order_list, orders_with_items
from orders.serializers import (
    OrderDetailOutputSerializer,
    OrderInputSerializer,
    OrderOutputSerializer,
    order_detail_to_dict,
    order_input_validate,
    order_to_dict,
)
from orders.services import OrderLine, order_cancel, order_place

IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH}, OpenApiParameter.HEADER,
    required=False,
    description="Same key from the same user: the first answer is replayed, nothing is ordered twice.",
)  # fmt: skip


PREFER_HEADER = OpenApiParameter(
    "Prefer", str, OpenApiParameter.HEADER, required=False,
    description="`respond-async`: answer 202 once stock is reserved; a settler pays it in its next batch.",
)  # fmt: skip

# What the answers of an order carry beside the body.
REPLAYED_HEADER = OpenApiParameter(
    "Idempotent-Replayed", {"type": "string", "enum": ["true"]}, OpenApiParameter.HEADER, response=[201, 202],
    description="Present when this is the answer an earlier request with the same Idempotency-Key got.",
)  # fmt: skip
LOCATION_HEADER = OpenApiParameter(
    "Location", {"type": "string", "format": "uri-reference"}, OpenApiParameter.HEADER, response=[202],
    required=True, description="The order (`/api/v1/orders/{orderId}`): poll it for its progress.",
)  # fmt: skip
PREFERENCE_APPLIED_HEADER = OpenApiParameter(
    "Preference-Applied", {"type": "string", "enum": ["respond-async"]}, OpenApiParameter.HEADER, response=[202],
    required=True, description="The order is paid after this answer (RFC 7240).",
)  # fmt: skip


logger = logging.getLogger(__name__)
_OUTCOMES = {Placement.PAID: metrics.ORDERS.labels("paid"), Placement.ACCEPTED: metrics.ORDERS.labels("accepted")}
_REPLAYED = metrics.ORDERS.labels("replayed")


def _prefers_async(request) -> bool:
    """RFC 7240: `Prefer: respond-async` asks for 202 now and the payment later."""
    preferences = request.META.get("HTTP_PREFER", "")
    return any(p.strip().split("=")[0].strip().lower() == "respond-async" for p in preferences.split(","))


def request_fingerprint(data: dict) -> str:
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


class OrderListCreateApi(APIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        request=OrderInputSerializer,
        responses={201: OrderOutputSerializer, 202: OrderOutputSerializer},
        parameters=[IDEMPOTENCY_HEADER, PREFER_HEADER, REPLAYED_HEADER, LOCATION_HEADER, PREFERENCE_APPLIED_HEADER],
        summary="Place an order: reserve stock, apply the coupon, pay from the balance",
        description="201 with the paid order; with `Prefer: respond-async`, 202 with the order PENDING_PAYMENT "
        "for a settler to pay in its next batch (follow `Location` to watch its progress).",
    )
    @raises(
        NotYourOrder, IdempotencyKeyReused, RequestInProgress, KeyTakenOver, TooManyIdempotencyKeys,  # the key's
        ProductNotFound, ProductUnavailable, PriceChanged, RateLimited, OutOfStock, PurchaseLimitReached,
        TooManyUnpaidOrders, CouponInvalid, InsufficientBalance, AccountMissing, BalanceConflict, LockTimeout,
        PaymentBacklogFull, ReservationLost, StockNotLoaded, OrderOutcomeUnknown,
    )  # fmt: skip
    def post(self, request):
        data = order_input_validate(request.data)
        if data["userId"] != request.user.id:
            raise NotYourOrder()
        key = request.META.get("HTTP_IDEMPOTENCY_KEY") or None
        if key is not None and len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise ValidationError({"Idempotency-Key": [f"At most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."]})
        placed = order_place(
            asynchronous=_prefers_async(request),
            user_id=request.user.id,
            lines=[OrderLine(i["productId"], i["quantity"], i["price"]) for i in data["orderItems"]],
            coupon_code=data.get("couponCode"),
            idempotency_key=key,
            fingerprint=request_fingerprint(data) if key else "",
            client_ip=request.META.get("REMOTE_ADDR", ""),
        )
        status_code = placement_status_code(placed.placement)
        headers = {"Idempotent-Replayed": "true"} if placed.replayed else {}
        if placed.placement is Placement.ACCEPTED:
            headers["Location"] = reverse("order-detail", kwargs={"orderId": placed.order.id})
            headers["Preference-Applied"] = "respond-async"
            if not placed.replayed:  # with the request id: the settler's batch line names the order
                logger.info("order %s accepted for payment", placed.order.id)
        if metrics.enabled():
            (_REPLAYED if placed.replayed else _OUTCOMES[placed.placement]).inc()
        return Response(order_to_dict(placed.order), status=status_code, headers=headers)

    @extend_schema(responses={200: OrderOutputSerializer(many=True)}, summary="The caller's orders, newest first")
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(order_list(user_id=request.user.id), request, view=self)
        first_page = paginator.get_previous_link() is None
        orders = orders_with_items(page, user_id=request.user.id if first_page else None)
        return paginator.get_paginated_response([order_to_dict(order) for order in orders])


class OrderDetailApi(APIView):
    @extend_schema(responses={200: OrderDetailOutputSerializer}, summary="One of the caller's orders, with progress")
    @raises(OrderNotFound)
    def get(self, request, orderId: int):  # the URL names it as the API does
        return Response(order_detail_to_dict(order_get(order_id=orderId, user_id=request.user.id)))


class OrderCancelApi(APIView):
    @extend_schema(
        request=None, responses={200: OrderOutputSerializer}, summary="Cancel: refund, release stock and coupon"
    )
    @raises(OrderNotFound, InvalidStatusTransition, CancelWindowClosed)
    def post(self, request, orderId: int):
        return Response(order_to_dict(order_cancel(order_id=orderId, user_id=request.user.id)))

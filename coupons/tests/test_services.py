import datetime

import pytest
from django.utils import timezone

from coupons.errors import CouponInvalid
from coupons.models import Coupon
from coupons.services import coupon_redeem, coupon_release
from devtools.testing import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "kind, value, cap, amount, expected",
    [
        (Coupon.Kind.FIXED, 300, None, 1_000, 300),
        (Coupon.Kind.FIXED, 300, None, 200, 200),  # never more than the order
        (Coupon.Kind.PERCENT, 10, None, 1_234, 123),  # rounds down: minor units
        (Coupon.Kind.PERCENT, 50, 100, 1_000, 100),  # capped
    ],
)
def test_discounts(kind, value, cap, amount, expected):
    coupon = Coupon(code="X", kind=kind, value=value, max_discount=cap)
    assert coupon.discount_for(amount) == expected


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"active": False}, "NOT_FOUND"),
        ({"valid_from": timezone.now() + datetime.timedelta(hours=1)}, "EXPIRED"),
        ({"valid_until": timezone.now() - datetime.timedelta(hours=1)}, "EXPIRED"),
        ({"min_order_amount": 5_000}, "MIN_ORDER_AMOUNT"),
        ({"usage_limit": 0}, "USAGE_LIMIT_REACHED"),
    ],
)
def test_a_coupon_that_does_not_apply_says_why(fields, reason):
    Coupon.objects.create(code="C", kind=Coupon.Kind.FIXED, value=5, **fields)
    with pytest.raises(CouponInvalid) as failure:
        coupon_redeem(code="C", user_id=make_user().id, order_amount=1_000, reference="order:1")
    assert failure.value.details == {"reason": reason}
    assert Coupon.objects.get(code="C").times_used == 0


def test_releasing_a_redemption_gives_the_use_back_once():
    Coupon.objects.create(code="C", kind=Coupon.Kind.FIXED, value=5, usage_limit=1, per_user_limit=1)
    user = make_user()
    coupon_redeem(code="C", user_id=user.id, order_amount=100, reference="order:1")

    assert coupon_release(reference="order:1") is True
    assert coupon_release(reference="order:1") is False
    assert Coupon.objects.get(code="C").times_used == 0
    coupon_redeem(code="C", user_id=user.id, order_amount=100, reference="order:2")

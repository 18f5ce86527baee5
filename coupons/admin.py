from django.contrib import admin

from coupons.models import Coupon, CouponRedemption
from kernel.admin_tools import ReadOnlyAdmin


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    list_display = ["code", "kind", "value", "max_discount", "min_order_amount", "times_used", "usage_limit",
                    "per_user_limit", "valid_from", "valid_until", "active"]  # fmt: skip
    list_filter = ["kind", "active"]
    search_fields = ["code"]
    readonly_fields = ["times_used"]


@admin.register(CouponRedemption)
class CouponRedemptionAdmin(ReadOnlyAdmin):
    list_display = ["id", "coupon", "user_id", "reference", "discount", "released", "created_at"]
    list_filter = ["released"]

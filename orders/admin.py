from django.contrib import admin

from config.admin_tools import ReadOnlyAdmin
from orders.models import Order, OrderItem


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    fields = ["product", "quantity", "unit_price"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user",
        "status",
        "total_amount",
        "discount_amount",
        "paid_amount",
        "coupon_code",
        "created_at",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["id", "user__username", "coupon_code"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    inlines = [OrderItemInline]

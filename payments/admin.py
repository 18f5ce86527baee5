from django.contrib import admin

from kernel.admin_tools import ReadOnlyAdmin
from payments.models import Payment, Refund


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ["id", "order_id", "user_id", "amount", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["order_id", "user_id"]


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ["id", "payment", "amount", "created_at"]

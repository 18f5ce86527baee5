from django.contrib import admin
from django.db.models import OuterRef, Subquery, Sum
from django.urls import reverse
from django.utils.html import format_html

from inventory import redis_counts
from inventory.models import Product, StockMovement
from inventory.services import (
    product_create,
    product_delete,
    product_purchase_limit_set,
    product_update,
    stock_adjust,
)
from kernel.actors import admin_reference
from kernel.admin_tools import AdjustLinkMixin, ReadOnlyAdmin, adjust_url, adjust_view


@admin.register(Product)
class ProductAdmin(AdjustLinkMixin, admin.ModelAdmin):
    """Editing a product (change) is not changing its stock: that needs inventory.adjust_stock."""

    adjust_permission = "inventory.adjust_stock"
    list_display = ["id", "name", "price", "active", "purchase_limit", "database_stock", "live_stock", "adjust_link"]
    list_filter = ["active"]
    search_fields = ["name"]
    readonly_fields = ["database_stock", "live_stock", "adjust_link"]

    def save_model(self, request, obj, form, change):
        # Orders check the price, the on-sale flag and the purchase limit in Redis too: the
        # services write the database and Redis in the order that keeps them honest.
        if change:
            changed = {name: getattr(obj, name) for name in ("name", "price", "active") if name in form.changed_data}
            product_update(product=obj, **changed)
        else:
            created = product_create(name=obj.name, price=obj.price, active=obj.active)
            obj.pk, obj.created_at = created.pk, created.created_at
        if "purchase_limit" in form.changed_data:
            product_purchase_limit_set(product=obj, limit=obj.purchase_limit)

    def delete_model(self, request, obj):
        product_delete(product=obj)

    def delete_queryset(self, request, queryset):
        for product in queryset:
            product_delete(product=product)

    def get_queryset(self, request):
        # A sum per product shown, over its own movements (index on product): a join and GROUP BY
        # summed the whole ledger before the page's 100 rows were cut, 0.5 s at 2 million movements.
        own = StockMovement.objects.filter(product=OuterRef("pk")).order_by().values("product")
        return (
            super()
            .get_queryset(request)
            .annotate(on_hand=Subquery(own.annotate(total=Sum("quantity")).values("total")))
        )

    @admin.display(description="Stock (database)")
    def database_stock(self, obj):
        return getattr(obj, "on_hand", None) or 0

    @admin.display(description="Available (Redis, live)")
    def live_stock(self, obj):
        live = redis_counts.available(product_ids=[obj.id])[obj.id]  # one GET a row; admin pages are short
        return "not loaded" if live is None else live

    @admin.display(description="Stock")
    def adjust_link(self, obj):
        if obj.pk is None:
            return "-"
        return format_html(
            '<a href="{}">Restock / adjust</a>', reverse("admin:inventory_product_adjust", args=[obj.pk])
        )

    def get_urls(self):
        def apply(product, amount, reason, admin_user):
            stock_adjust(product=product, quantity=amount, reason=reason, reference=admin_reference(admin_user))
            return f"Stock of {product} changed by {amount:+d}."

        view = adjust_view(
            self,
            title="Restock or adjust stock",
            help_text="Writes the stock ledger and the live Redis count in one step. Units held by "
            "orders in flight can not be taken away.",
            permission=self.adjust_permission,
            max_setting="ADMIN_STOCK_ADJUST_MAX",
            apply=apply,
        )
        return [adjust_url(self, "adjust", view), *super().get_urls()]


@admin.register(StockMovement)
class StockMovementAdmin(ReadOnlyAdmin):
    list_display = ["id", "product", "kind", "quantity", "reference", "reason", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference", "reason"]
    list_select_related = ["product"]

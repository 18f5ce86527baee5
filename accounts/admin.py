from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import Account, BalanceEntry, User
from accounts.services import account_change_balance
from config.admin_tools import AdjustLinkMixin, ReadOnlyAdmin, adjust_url, adjust_view


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ["id", "username", "is_staff", "is_active", "date_joined"]


class BalanceEntryInline(admin.TabularInline):
    model = BalanceEntry
    fields = ["created_at", "kind", "amount", "balance_after", "reference"]
    readonly_fields = fields
    ordering = ["-id"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False


@admin.register(Account)
class AccountAdmin(AdjustLinkMixin, ReadOnlyAdmin):
    """Read-only for those with the view permission; money moves only through "Top up / adjust",
    for those with accounts.adjust_balance."""

    adjust_permission = "accounts.adjust_balance"
    list_display = ["user", "balance", "version", "updated_at", "adjust_link"]
    search_fields = ["user__username", "user__id"]
    list_select_related = ["user"]
    readonly_fields = ["user", "balance", "version", "updated_at", "adjust_link"]
    inlines = [BalanceEntryInline]

    @admin.display(description="Balance")
    def adjust_link(self, obj):
        url = reverse("admin:accounts_account_adjust", args=[obj.pk])
        return format_html('<a href="{}">Top up / adjust</a>', url)

    def get_urls(self):
        def apply(account, amount, reason):
            kind = BalanceEntry.Kind.TOP_UP if amount > 0 else BalanceEntry.Kind.ADJUSTMENT
            account_change_balance(user_id=account.pk, amount=amount, kind=kind, reference=f"admin: {reason}"[:64])
            return f"Balance of user {account.pk} changed by {amount:+d}."

        view = adjust_view(
            self,
            title="Top up or adjust balance",
            help_text="Goes through the same optimistic lock and ledger as payments.",
            permission=self.adjust_permission,
            apply=apply,
        )
        return [adjust_url(self, "adjust", view), *super().get_urls()]


@admin.register(BalanceEntry)
class BalanceEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "amount", "balance_after", "reference", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference"]

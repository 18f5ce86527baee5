from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.urls import reverse
from django.utils.html import format_html

from accounts.forms import AdminLoginForm
from accounts.models import Account, ApiToken, BalanceAdjustmentRequest, BalanceEntry, User
from accounts.services import (
    balance_adjust,
    balance_adjustment_approve,
    balance_adjustment_reject,
    token_revoke_many,
)
from kernel.admin_tools import AdjustLinkMixin, ReadOnlyAdmin, adjust_url, adjust_view
from kernel.errors import DomainError

# The admin's login is limited as the API's is (accounts/login_limits.py).
admin.site.login_form = AdminLoginForm


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ["id", "username", "is_staff", "is_active", "date_joined"]
    # A deactivated or deleted user's tokens leave the Redis token map through accounts/signals.py.


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
        def apply(account, amount, reason, admin_user):
            outcome = balance_adjust(user_id=account.pk, amount=amount, reason=reason, admin=admin_user)
            if isinstance(outcome, BalanceAdjustmentRequest):
                return f"Credit of {amount:+d} awaits a second admin's approval (request {outcome.pk})."
            return f"Balance of user {account.pk} changed by {amount:+d}."

        view = adjust_view(
            self,
            title="Top up or adjust balance",
            help_text="Goes through the same optimistic lock and ledger as payments. A credit above "
            f"{settings.ADMIN_CREDIT_APPROVAL_THRESHOLD:,} waits for another admin's approval "
            "(Balance adjustment requests).",
            permission=self.adjust_permission,
            max_setting="ADMIN_BALANCE_ADJUST_MAX",
            apply=apply,
        )
        return [adjust_url(self, "adjust", view), *super().get_urls()]


@admin.register(BalanceAdjustmentRequest)
class BalanceAdjustmentRequestAdmin(ReadOnlyAdmin):
    """Credits above ADMIN_CREDIT_APPROVAL_THRESHOLD, asked for on an account's "Top up / adjust"
    page. Those with accounts.adjust_balance see them and approve or reject them; a request is
    approved by an admin other than its requester, and applied then, once."""

    list_display = ["id", "account", "amount", "reason", "status", "requested_by", "requested_at", "decided_by",
                    "decided_at"]  # fmt: skip
    list_filter = ["status"]
    list_select_related = ["account", "requested_by", "decided_by"]
    ordering = ["-id"]
    actions = ["approve", "reject"]

    def has_view_permission(self, request, obj=None):
        return self.has_adjust_permission(request) or super().has_view_permission(request, obj)

    def has_adjust_permission(self, request):
        return request.user.has_perm("accounts.adjust_balance")

    @admin.action(description="Approve selected requests (credits the balance)", permissions=["adjust"])
    def approve(self, request, queryset):
        for pending in queryset:
            try:
                change = balance_adjustment_approve(request_id=pending.pk, approved_by=request.user)
            except DomainError as refused:
                self.message_user(request, f"Request {pending.pk}: {refused.message}", messages.ERROR)
                continue
            done = f"Approved: {change.amount:+d} credited to user {pending.account_id}."
            self.log_change(request, pending, done)
            self.message_user(request, f"Request {pending.pk}: {done}", messages.SUCCESS)

    @admin.action(description="Reject selected requests", permissions=["adjust"])
    def reject(self, request, queryset):
        for pending in queryset:
            try:
                balance_adjustment_reject(request_id=pending.pk, rejected_by=request.user)
            except DomainError as refused:
                self.message_user(request, f"Request {pending.pk}: {refused.message}", messages.ERROR)
                continue
            self.log_change(request, pending, "Rejected.")
            self.message_user(request, f"Request {pending.pk}: rejected.", messages.SUCCESS)


@admin.register(BalanceEntry)
class BalanceEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "amount", "balance_after", "reference", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Tokens are listed and revoked here, never made: a token is shown once, to the user who
    signs in for it (POST /api/v1/auth/token), and the database keeps only its hash."""

    list_display = ["id", "user", "hash_tail", "created_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["user__username", "=user__id"]
    list_select_related = ["user"]
    fields = ["user", "hash_tail", "created_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    ordering = ["-id"]
    actions = ["revoke"]

    @admin.display(description="Hash (last 8)")
    def hash_tail(self, obj):
        return f"…{obj.key_hash[-8:]}"

    def has_revoke_permission(self, request):
        return request.user.has_perm("accounts.revoke_apitoken")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = token_revoke_many(token_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"Revoked {revoked} token(s); every server refuses them at once.",
                          messages.SUCCESS)  # fmt: skip

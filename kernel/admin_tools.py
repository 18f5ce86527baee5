"""A small admin page for changes that must go through a service (stock, money) with a reason."""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from kernel.errors import DomainError

# Every ledger column is a PostgreSQL bigint: no setting lets a change past it (a 500 before).
_BIGINT_MAX = 2**63 - 1


class AdjustForm(forms.Form):
    """Amount and reason of one change, the amount at most the setting `max_setting` either way:
    a slip of the finger (three zeros too many) is a form error, not a booking."""

    amount = forms.IntegerField()
    reason = forms.CharField(max_length=200)

    def __init__(self, *args, max_setting: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_setting = max_setting
        self.max_amount = min(getattr(settings, max_setting), _BIGINT_MAX)  # read per request
        self.fields["amount"].help_text = f"Positive adds, negative takes away; at most {self.max_amount:,} either way."

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("Zero changes nothing.")
        if abs(amount) > self.max_amount:
            raise forms.ValidationError(f"At most {self.max_amount:,} either way in one change ({self.max_setting}).")
        return amount


def adjust_view(
    model_admin: admin.ModelAdmin,
    *,
    title: str,
    help_text: str,
    permission: str,
    max_setting: str,
    apply: Callable[[object, int, str, object], str],
) -> Callable:
    """An admin view: a form with amount (bounded by the setting `max_setting`) and reason;
    `apply(obj, amount, reason, admin_user)` does the change and says what it did, which goes
    into the admin's history of `obj` under the admin's name.

    Only for users with `permission` ("app_label.codename"), on GET as on POST: being staff
    lets one into the admin, not move stock or money.
    """

    def view(request, object_id):
        if not request.user.has_perm(permission):
            raise PermissionDenied
        obj = get_object_or_404(model_admin.model, pk=object_id)
        opts = model_admin.model._meta
        back_url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        form = AdjustForm(request.POST or None, max_setting=max_setting)
        if request.method == "POST" and form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                done = apply(obj, form.cleaned_data["amount"], reason, request.user)
            except DomainError as error:
                form.add_error(None, f"{error.code}: {error.message}")
            else:
                # Written once the service's own transaction has committed (and done what it
                # does after its commit, in Redis): the ledger row names the admin in any case.
                model_admin.log_change(request, obj, f"{done} Reason: {reason}")
                model_admin.message_user(request, done, messages.SUCCESS)
                return redirect(back_url)
        context = {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "help_text": help_text,
            "form": form,
            "object": obj,
            "back_url": back_url,
            "opts": opts,
        }
        return TemplateResponse(request, "admin/adjust_form.html", context)

    return model_admin.admin_site.admin_view(view)


class AdjustLinkMixin:
    """Shows the `adjust_link` column and field only to users with `adjust_permission`."""

    adjust_permission: str
    adjust_field = "adjust_link"

    def has_adjust_permission(self, request) -> bool:
        return request.user.has_perm(self.adjust_permission)

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if self.has_adjust_permission(request) else [f for f in shown if f != self.adjust_field]

    def get_readonly_fields(self, request, obj=None):
        shown = super().get_readonly_fields(request, obj)
        return shown if self.has_adjust_permission(request) else [f for f in shown if f != self.adjust_field]


def adjust_url(model_admin: admin.ModelAdmin, name: str, view: Callable):
    opts = model_admin.model._meta
    return path("<path:object_id>/adjust/", view, name=f"{opts.app_label}_{opts.model_name}_{name}")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened (orders, payments, ledgers) are read, never edited by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

"""A small admin page for changes that must go through a service (stock, money) with a reason."""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from config.errors import DomainError


class AdjustForm(forms.Form):
    amount = forms.IntegerField(help_text="Positive adds, negative takes away.")
    reason = forms.CharField(max_length=200)

    def clean_amount(self):
        if self.cleaned_data["amount"] == 0:
            raise forms.ValidationError("Zero changes nothing.")
        return self.cleaned_data["amount"]


def adjust_view(
    model_admin: admin.ModelAdmin,
    *,
    title: str,
    help_text: str,
    permission: str,
    apply: Callable[[object, int, str], str],
) -> Callable:
    """An admin view: a form with amount and reason, `apply(obj, amount, reason)` does the change.

    Only for users with `permission` ("app_label.codename"), on GET as on POST: being staff
    lets one into the admin, not move stock or money.
    """

    def view(request, object_id):
        if not request.user.has_perm(permission):
            raise PermissionDenied
        obj = get_object_or_404(model_admin.model, pk=object_id)
        opts = model_admin.model._meta
        back_url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        form = AdjustForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                done = apply(obj, form.cleaned_data["amount"], form.cleaned_data["reason"])
            except DomainError as error:
                form.add_error(None, f"{error.code}: {error.message}")
            else:
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

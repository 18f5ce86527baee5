"""The admin's login form: the API login's limits (accounts.services.user_authenticate)."""

from __future__ import annotations

import redis
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from accounts.errors import InvalidCredentials, LoginRateLimited
from accounts.services import user_authenticate


class AdminLoginForm(AdminAuthenticationForm):
    """Django's admin login, its password checked by the service the API login uses: the same
    counts per username and per client address, shared between the two (a guesser gains nothing
    by switching), checked before the password is."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "rate_limited": "Too many login attempts for this username or from this address. Try again in "
        "%(seconds)s seconds.",
        "rate_limited_global": "Too many failed logins on this site right now: logins are paused for everyone. "
        "Try again in %(seconds)s seconds.",
        "limiter_away": "Logins are paused: the attempt counter (Redis) does not answer. Try again shortly.",
    }

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return self.cleaned_data
        try:
            self.user_cache = user_authenticate(
                username=username, password=password, client_ip=self.request.META.get("REMOTE_ADDR", "")
            )
        except LoginRateLimited as limited:
            code = "rate_limited_global" if limited.details["scope"] == "global" else "rate_limited"
            raise ValidationError(
                self.error_messages[code], code=code, params={"seconds": limited.retry_after}
            ) from limited
        except InvalidCredentials as refused:
            raise self.get_invalid_login_error() from refused
        except redis.RedisError as away:
            raise ValidationError(self.error_messages["limiter_away"], code="limiter_away") from away
        self.confirm_login_allowed(self.user_cache)  # staff only
        return self.cleaned_data

from django.apps import AppConfig
from django.db.models.signals import post_save


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import schema  # noqa: F401  (registers the OpenAPI extension)
        from accounts.models import User
        from accounts.signals import open_account_for_new_user

        post_save.connect(open_account_for_new_user, sender=User, dispatch_uid="accounts.open_account_for_new_user")

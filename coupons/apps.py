from django.apps import AppConfig


class CouponsConfig(AppConfig):
    name = "coupons"
    default_auto_field = "django.db.models.BigAutoField"

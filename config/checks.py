"""`manage.py check --deploy` fails on what a deployment must not run with."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def development_secret_key(app_configs, **kwargs) -> list[Error]:
    if not settings.SECRET_KEY_IS_DEVELOPMENT:
        return []
    return [
        Error(
            "SECRET_KEY is not set: a development key made for this checkout signs admin sessions and CSRF tokens.",
            hint="Set SECRET_KEY in the environment or in .env.",
            id="config.E001",
        )
    ]

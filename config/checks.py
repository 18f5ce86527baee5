"""`manage.py check --deploy` also says what only `make run` used to: no SECRET_KEY is set."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def development_secret_key(app_configs, **kwargs) -> list[Warning]:
    if not settings.SECRET_KEY_IS_DEVELOPMENT:
        return []
    return [
        Warning(
            "SECRET_KEY is not set: the development key, which is public, signs admin sessions and CSRF tokens.",
            hint="Set SECRET_KEY in the environment or in .env.",
            id="config.W001",
        )
    ]

"""The environment as every entry point reads it: the process's own variables first, then the
project's `.env` for those not set (django-environ). Imported before anything reads a variable
(settings, the dev-server launcher, gunicorn's config), so a value in `.env` reaches `make run`,
the servers it starts and Django alike. An empty variable counts as unset, and a value that
does not parse stops start-up with a message naming its variable."""

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = BASE_DIR / ".env"

if ENV_FILE.exists():  # without one, django-environ would log that it is missing
    environ.Env.read_env(ENV_FILE, overwrite=False)


class _Env(environ.Env):
    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        raw = self.ENVIRON.get(var)
        if raw is not None and not raw.strip() and default is not self.NOTSET:
            return self.parse_value(default, cast) if parse_default and default is not None else default
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{var}={raw!r} is not valid here: {exc}") from exc


env = _Env()


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server with logical database `db`: redis://host:port/N, unix://path?db=N."""
    base, separator, query = url.partition("?")
    if base.startswith("unix:"):
        query = urlencode([(key, value) for key, value in parse_qsl(query) if key != "db"] + [("db", str(db))])
        return f"{base}?{query}"
    path = urlsplit(base).path
    return f"{base.removesuffix(path)}/{db}{separator}{query}"

"""The environment as every entry point reads it: the process's own variables first, then the
project's `.env` for those not set (django-environ). Imported before anything reads a variable
(settings, the dev-server launcher, gunicorn's config), so a value in `.env` reaches `make run`,
the servers it starts and Django alike. An empty variable counts as unset, and a value that
does not parse stops start-up with a message naming its variable."""

import os
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = BASE_DIR / ".env"


class _EnvFile(environ.Env):
    ENVIRON: dict[str, str] = {}  # read_env writes here, not into os.environ


def _read_env_file() -> None:
    """Fill in from .env what the process leaves unset or blank (read_env alone would keep a
    blank DATABASE_URL from docker or CI over the file's)."""
    if not ENV_FILE.exists():  # without one, django-environ would log that it is missing
        return
    _EnvFile.read_env(ENV_FILE)
    for name, value in _EnvFile.ENVIRON.items():
        if not os.environ.get(name, "").strip():
            os.environ[name] = value


_read_env_file()


class _Env(environ.Env):
    @classmethod
    def parse_value(cls, value, cast):
        if cast is float and isinstance(value, str):
            return float(value)  # django-environ's own float cast drops letters: "1 minute" became 1.0
        return super().parse_value(value, cast)

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        raw = self.ENVIRON.get(var)
        if raw is not None and not raw.strip() and default is not self.NOTSET:
            return self.parse_value(default, cast) if parse_default and default is not None else default
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{var}={raw!r} is not valid here: {exc}") from exc


env = _Env()


def database_url_naming(url: str, name: str) -> str:
    """`url` with its database name replaced, everything else as written: host or socket
    directory, credentials, options. By hand, not urlunsplit, which would read
    postgres:////run/postgresql/shop as host "run"."""
    base, separator, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    slash = rest.find("/")
    location, path = (rest, "") if slash == -1 else (rest[:slash], rest[slash:])
    directory = path.rsplit("/", 1)[0] if path else ""
    return f"{scheme}://{location}{directory}/{quote(name, safe='')}{separator}{query}"


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server with logical database `db`: redis://host:port/N, unix://path?db=N."""
    base, _, query = url.partition("?")
    params = [(key, value) for key, value in parse_qsl(query) if key != "db"]
    if base.startswith("unix:"):
        return f"{base}?{urlencode([*params, ('db', str(db))])}"
    path = urlsplit(base).path
    return f"{base.removesuffix(path)}/{db}" + (f"?{urlencode(params)}" if params else "")

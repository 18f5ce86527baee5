"""The environment as every entry point reads it: the process's own variables first, then the
project's `.env` for those not set (django-environ). Imported before anything reads a variable
(settings, the dev-server launcher), so a value in `.env` reaches `make run`, the servers it
starts and Django alike."""

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = BASE_DIR / ".env"

if ENV_FILE.exists():  # without one, django-environ would log that it is missing
    environ.Env.read_env(ENV_FILE, overwrite=False)
env = environ.Env()


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server with logical database `db`: redis://host:port/N, unix://path?db=N."""
    base, separator, query = url.partition("?")
    if base.startswith("unix:"):
        query = urlencode([(key, value) for key, value in parse_qsl(query) if key != "db"] + [("db", str(db))])
        return f"{base}?{query}"
    path = urlsplit(base).path
    return f"{base.removesuffix(path)}/{db}{separator}{query}"

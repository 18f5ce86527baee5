"""The WSGI application gunicorn serves: the JSON API and the pages (shop, admin, docs), each
through its own middleware chain.

The API (`/api/v1/`) authenticates by bearer token and answers JSON only, so the pages' session,
CSRF, messages, static-file and frame middleware do nothing for it; they still ran on every
order. Its chain (settings.API_MIDDLEWARE) keeps what applies to it: request ids, metrics, the
HTTPS settings, its Content-Security-Policy and the request size bounds. Every other path goes
through settings.MIDDLEWARE, as Django's own handler would.
"""

import os

from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

_pages = get_wsgi_application()  # sets Django up first

from django.conf import settings  # noqa: E402

API_PREFIX = "/api/v1/"


class ApiHandler(WSGIHandler):
    """Django's handler with settings.API_MIDDLEWARE for its chain."""

    def load_middleware(self, is_async=False):
        # BaseHandler builds the chain from settings.MIDDLEWARE: shown the API's list while it
        # does (once, at start-up, before any request), then the full list again.
        pages_chain = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = pages_chain


_api = ApiHandler()


def application(environ, start_response):
    handler = _api if environ.get("PATH_INFO", "").startswith(API_PREFIX) else _pages
    return handler(environ, start_response)

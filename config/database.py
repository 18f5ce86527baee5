"""The URL of the database this process is connected to, for child processes that must use
the very same one (under tests: test_shop): load-test servers, test workers."""

from urllib.parse import quote, urlencode

from django.db import connection


def current_database_url() -> str:
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    # A Unix-socket database comes as ?host=/path/to/dir&port=N (OPTIONS), a TCP one in the URL.
    socket_params = {name: db["OPTIONS"][name] for name in ("host", "port") if name in db["OPTIONS"]}
    if socket_params:
        query = "?" + urlencode(socket_params)
        return f"postgres://{credentials}@/{quote(db['NAME'], safe='')}{query}"
    host = quote(db["HOST"] or "127.0.0.1", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"

"""/healthz: the process answers. /readyz: PostgreSQL and Redis answer too."""

from django.db import connection
from django.http import HttpResponse, JsonResponse
from django_redis import get_redis_connection


def healthz(request):
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


def readyz(request):
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    try:
        get_redis_connection("default").ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)

"""The load-test commands' own database and Redis db, apart from what `make run` serves.

Which database and Redis db a process uses is settled when settings load (config/settings.py's
LOADTEST: the configured database's name + `_loadtest`, Redis db 14), before any command
runs. So a command that reseeds starts itself again with SHOP_LOADTEST=1 rather than switching
databases under connections and Redis clients already made. In the command, not in manage.py:
whatever the entry point (manage.py, make loadtest, django-admin, python -m django). exec, not
a child: one process, so Ctrl-C and exit codes are as before.
"""

from __future__ import annotations

import os
import sys

from django.conf import settings


def restart_with_own_data() -> None:
    """Unless this process already uses the load test's own data (or the tests'), exec the
    same command line again with SHOP_LOADTEST=1; returns only when it does."""
    if settings.LOADTEST or settings.TESTING:
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "SHOP_LOADTEST": "1"})

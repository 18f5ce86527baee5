"""Settings read from the environment: values users type are taken, wrong ones named."""

import os
import subprocess
import sys

from django.conf import settings


def _settings_in_child(**env: str) -> subprocess.CompletedProcess:
    program = "import django; django.setup(); from django.conf import settings; print(settings.LOG_LEVEL)"
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_level_in_any_case():
    # gunicorn.conf.py lowercases LOG_LEVEL; settings used to crash every worker on "warning".
    child = _settings_in_child(LOG_LEVEL="warning")
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "WARNING"


def test_unknown_log_level_is_named():
    child = _settings_in_child(LOG_LEVEL="loud")
    assert child.returncode != 0
    assert "LOG_LEVEL='LOUD'" in child.stderr
    assert "WARNING" in child.stderr

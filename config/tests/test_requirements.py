"""What serving installs is enough to serve, and every install is pinned to what CI tested."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from django.conf import settings

ROOT = settings.BASE_DIR
DEV_ONLY = ("pytest", "pytest_django", "playwright", "matplotlib", "numpy", "k6", "ruff", "schemathesis", "hypothesis")


def _names(path) -> set[str]:
    names = set()
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_requirement_is_pinned_in_the_constraints():
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    assert _names("requirements.txt") | _names("requirements-dev.txt") <= pinned


def test_serving_requirements_leave_the_test_and_load_tools_out():
    serving = _names("requirements.txt")
    assert not serving & {name.replace("_", "-") for name in DEV_ONLY}
    assert {"pytest", "playwright", "k6", "matplotlib", "ruff", "schemathesis"} <= _names("requirements-dev.txt")


def test_the_server_starts_without_the_test_and_load_tools():
    """The web app, the settler and the Celery app import with every dev-only package missing."""
    blocker = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {DEV_ONLY!r}:
            raise ImportError(f"{{name}} is not installed for serving")
sys.meta_path.insert(0, Block())
import django
django.setup()
import config.urls, config.wsgi, config.celery, orders.settlement, orders.tasks, inventory.tasks
from django.core.management import call_command
call_command("check")
print("served without dev packages")
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("SHOP_TESTING", None)
    done = subprocess.run(
        [sys.executable, "-c", blocker], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served without dev packages" in done.stdout

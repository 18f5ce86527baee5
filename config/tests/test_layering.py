"""The house's rooms, checked from the source (ast, no import): which package may import which.

- kernel (shared code) imports no app and not the project;
- serving code (the project, the kernel, the ops pages, the apps) never imports dev tooling;
- nothing imports orders but the project's urls, the ops pages, dev tooling and loadtest;
- apps import each other only along orders -> payments -> accounts and orders -> inventory, coupons.
Tests and migrations are not serving code: they may import what they test with.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
APPS = {"accounts", "inventory", "coupons", "payments", "orders"}
PACKAGES = APPS | {"config", "kernel", "ops", "devtools", "loadtest"}
# What each app may import of the others (orders may call all four; payments takes its money
# from accounts' balances).
APP_DEPENDENCIES = {
    "orders": {"payments", "accounts", "inventory", "coupons"},
    "payments": {"accounts"},
    "accounts": set(),
    "inventory": set(),
    "coupons": set(),
}


def _serving_modules() -> list[Path]:
    return [
        path
        for package in sorted(PACKAGES)
        for path in sorted((ROOT / package).rglob("*.py"))
        if not {"tests", "migrations"} & set(path.relative_to(ROOT).parts)
    ]


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PACKAGES


IMPORTS = {path.relative_to(ROOT).as_posix(): _imported_packages(path) for path in _serving_modules()}


def _package(module: str) -> str:
    return module.split("/")[0]


def _breaking(rule) -> dict[str, set[str]]:
    return {module: bad for module, imported in IMPORTS.items() if (bad := rule(module, imported - {_package(module)}))}


def test_the_scan_sees_every_room():
    # Without this, a rule below could pass on an empty scan.
    assert {_package(module) for module in IMPORTS} == PACKAGES
    assert {"kernel", "inventory", "payments"} <= IMPORTS["orders/services.py"]


def test_the_kernel_imports_no_app_and_not_the_project():
    assert _breaking(lambda module, imported: imported if _package(module) == "kernel" else set()) == {}


@pytest.mark.parametrize("room", ["config", "kernel", "ops", *sorted(APPS)])
def test_serving_code_never_imports_dev_tooling(room):
    assert _breaking(lambda module, imported: imported & {"devtools"} if _package(module) == room else set()) == {}


def test_nothing_imports_orders_but_the_urls_the_ops_pages_dev_tooling_and_loadtest():
    allowed = {"config/urls.py"}
    allowed_rooms = {"ops", "devtools", "loadtest"}
    assert (
        _breaking(
            lambda module, imported: (
                imported & {"orders"} if module not in allowed and _package(module) not in allowed_rooms else set()
            )
        )
        == {}
    )


def test_apps_import_each_other_only_along_the_dependency_arrows():
    assert (
        _breaking(
            lambda module, imported: (
                (imported & APPS) - APP_DEPENDENCIES[_package(module)] if _package(module) in APPS else set()
            )
        )
        == {}
    )


def test_apps_and_ops_never_import_loadtest():
    assert (
        _breaking(lambda module, imported: imported & {"loadtest"} if _package(module) in APPS | {"ops"} else set())
        == {}
    )

"""Make sure Debian's Chromium is installed for the browser tests (`make test` calls this).

A browser download by a test tool is not possible here; the system package is. Installing
needs root (as on the CI machines); otherwise it says what to install.
"""

import contextlib
import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> int:
    if shutil.which("chromium") or os.path.exists(CHROMIUM):
        return 0
    if os.geteuid() != 0:
        print("The browser tests need Chromium: run `sudo apt-get install chromium`.", file=sys.stderr)
        return 1
    print("[browser] installing Debian's chromium for the browser tests", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(ensure_chromium())


# Flags for a closed network: no background connections, no first-run, no sandbox as root.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextlib.contextmanager
def chromium_page(*, viewport: tuple[int, int] = (1200, 860)):
    """A page in Debian's Chromium driven by Playwright, for the browser tests.

    Its `console_errors` list collects every console error and uncaught exception (a
    Content-Security-Policy violation is reported there as "Refused to ..."), each with its URL,
    except the browser's own request for /favicon.ico, which no page here asked for."""
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still synchronous and safe, so Django's async guard is told so.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from django.db import connections
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.console_errors = []
            page.on("console", lambda message: _collect(page.console_errors, message))
            page.on("pageerror", lambda exc: page.console_errors.append(f"uncaught: {exc}"))
            try:
                yield page
            finally:
                browser.close()
                # While Playwright's loop runs, the test's ORM calls see other context-local
                # database connections than the test's own: closed here, or one of them
                # outlives the test and the test database cannot be dropped at the end.
                connections.close_all()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def _collect(errors: list[str], message) -> None:
    url = message.location.get("url", "")
    if message.type == "error" and not url.endswith("/favicon.ico"):
        errors.append(f"{message.text} ({url})")

"""Make sure Debian's Chromium is installed for the browser tests (`make test` calls this).

A browser download by a test tool is not possible here; the system package is. Installing
needs root (as on the CI machines); otherwise it says what to install.
"""

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

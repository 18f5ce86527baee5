"""Files only this user may read, for the secrets a checkout keeps on disk: the development
SECRET_KEY, the admin's password, the passwords of the project's own PostgreSQL and Redis, the
seeded customers' tokens.

Each is private (0600) from its first byte: written to a new file that os.open creates with
that mode (O_CREAT | O_EXCL: never an existing file, nor a link someone left in its place)
beside its destination, then renamed or linked into place. A file written and then chmod-ed is
readable by every local user in between, and whoever opened it then keeps reading after the
chmod.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def private_file_write(path: Path, text: str) -> None:
    """Replace `path` with `text`, whole: readers see the old file or the new one."""
    os.replace(_private_draft(path, text), path)


def private_file_read_or_create(path: Path, *, make: Callable[[], str]) -> str:
    """`path`'s text (stripped); when it is missing, `make()`'s, written first.

    Several processes may start at once (gunicorn workers, Celery): the file appears whole or
    not at all (a hard link of a finished draft), and whoever loses the race reads the winner's.
    """
    if not path.exists():
        draft = _private_draft(path, make())
        try:
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink()
    return path.read_text().strip()


def _private_draft(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())  # a crash must not leave an empty key or password in place
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
    return draft

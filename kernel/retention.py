"""Trimming tables that grow with every order, in batches (docs/retention.md).

One DELETE of millions of rows fails under the statement timeout (DB_STATEMENT_TIMEOUT_MS), holds
its locks and bloats the write-ahead log while it runs. Each app trims its own tables with a
statement that deletes at most one batch; this loop runs it again, each run its own short
transaction (autocommit), until a batch comes back short or the time budget is spent. What was
not trimmed this time is trimmed at the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from kernel.database import sql_execute


@dataclass(frozen=True, slots=True)
class Batch:
    """What one statement did: rows deleted, and whether there may be more to delete."""

    deleted: int
    more: bool


@dataclass
class TrimResult:
    what: str
    deleted: int = 0
    batches: int = 0
    finished: bool = True  # False: the time budget ran out with rows still to trim


Progress = Callable[[TrimResult], None]


def statement_batches(sql: str, params: dict[str, object]) -> Callable[[int], Batch]:
    """A `delete_batch` for trim_in_batches from one DELETE that removes at most
    %(batch_size)s rows: a full batch means there may be more."""

    def delete_batch(size: int) -> Batch:
        deleted = sql_execute(sql, {**params, "batch_size": size})
        return Batch(deleted=deleted, more=deleted == size)

    return delete_batch


def trim_in_batches(
    what: str,
    delete_batch: Callable[[int], Batch],
    *,
    batch_size: int | None = None,
    time_budget_seconds: float | None = None,
    progress: Progress | None = None,
) -> TrimResult:
    """Call `delete_batch(batch_size)` until it says there is no more, or the budget has passed
    (checked between batches: one batch is bounded by its size, not by the budget).
    `progress` is told after every batch that deleted something."""
    size = settings.RETENTION_BATCH_SIZE if batch_size is None else batch_size
    budget = settings.RETENTION_TIME_BUDGET_SECONDS if time_budget_seconds is None else time_budget_seconds
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    deadline = time.monotonic() + budget
    result = TrimResult(what=what)
    while True:
        batch = delete_batch(size)
        result.batches += 1
        result.deleted += batch.deleted
        if batch.deleted and progress is not None:
            progress(result)
        if not batch.more:
            return result
        if time.monotonic() >= deadline:
            result.finished = False
            return result

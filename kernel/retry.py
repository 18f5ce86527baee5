"""Bounded, jittered retry for optimistic concurrency: the one retry loop of the project."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class RetryExhausted(Exception):
    def __init__(self, attempts: int):
        super().__init__(f"gave up after {attempts} attempts")
        self.attempts = attempts


@dataclass(frozen=True)
class Backoff:
    max_attempts: int
    base_ms: float = 2.0
    cap_ms: float = 50.0

    def delay(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.cap_ms, self.base_ms * 2**attempt)) / 1000.0


def retry_on_conflict(
    attempt_once: Callable[[], T | None], *, backoff: Backoff, on_conflict: Callable[[int], None]
) -> T:
    """Call `attempt_once` until it returns a value; None means "lost a race, try again".

    `on_conflict(attempt)` is told about every lost race (for counting and logging).
    """
    for attempt in range(backoff.max_attempts):
        result = attempt_once()
        if result is not None:
            return result
        on_conflict(attempt + 1)
        if attempt + 1 < backoff.max_attempts:
            time.sleep(backoff.delay(attempt))
    raise RetryExhausted(backoff.max_attempts)

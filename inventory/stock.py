"""The live available count in Redis: reservations by Lua script, and what reconciliation reads.

Keys (single Redis instance; the scripts build stock keys from a prefix):
    inv:stock:{product_id}   available units
    inv:resv:{token}         hash product_id -> quantity of one reservation
    inv:reservations         zset token -> reserved-at (ms): every reservation not yet forgotten
    inv:ready                the run id of the server that loaded stock from the database: absent
                             after data loss, another run's after a restart or failover
    inv:epoch                the database's stock epoch the counts were loaded under
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django_redis import get_redis_connection

from config.redis_scripts import run_lua

STOCK_PREFIX = "inv:stock:"
RESERVATION_PREFIX = "inv:resv:"
RESERVATIONS_KEY = "inv:reservations"
READY_KEY = "inv:ready"
EPOCH_KEY = "inv:epoch"
_LUA_DIR = Path(__file__).parent / "lua"


@dataclass(frozen=True)
class ReserveResult:
    ok: bool
    epoch: int | None = None  # the stock epoch the units were reserved under
    loaded: bool = True
    failed_product_id: int | None = None
    available: int | None = None


def redis_client():
    return get_redis_connection("default")


def run_script(name: str, *, keys: list[str], args: list[object]):
    return run_lua(_LUA_DIR / f"{name}.lua", keys=keys, args=args)


def reservation_key(token: uuid.UUID | str) -> str:
    return f"{RESERVATION_PREFIX}{token}"


def reserve(*, token: uuid.UUID, quantities: dict[int, int]) -> ReserveResult:
    args: list[object] = [STOCK_PREFIX, str(token), int(time.time() * 1000)]
    for product_id, quantity in sorted(quantities.items()):
        args += [product_id, quantity]
    result = run_script("reserve", keys=[READY_KEY, RESERVATIONS_KEY, reservation_key(token), EPOCH_KEY], args=args)
    if result[0] == 1:
        return ReserveResult(ok=True, epoch=int(result[1]))
    if result[0] == -1:
        return ReserveResult(ok=False, loaded=False)
    return ReserveResult(ok=False, failed_product_id=int(result[1]), available=int(result[2]))


def release(*, token: uuid.UUID | str) -> bool:
    return bool(run_script("release", keys=[RESERVATIONS_KEY, reservation_key(token)], args=[STOCK_PREFIX, str(token)]))


def add_available(*, product_id: int, quantity: int) -> None:
    redis_client().incrby(f"{STOCK_PREFIX}{product_id}", quantity)


def shift_available(*, quantities: dict[int, int]) -> None:
    """Add each (signed) quantity to its product's count, in one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    for product_id, quantity in quantities.items():
        pipe.incrby(f"{STOCK_PREFIX}{product_id}", quantity)
    pipe.execute()


def available(*, product_ids: list[int]) -> dict[int, int | None]:
    if not product_ids:
        return {}
    values = redis_client().mget([f"{STOCK_PREFIX}{pid}" for pid in product_ids])
    return {pid: (int(v) if v is not None else None) for pid, v in zip(product_ids, values, strict=True)}


def server_run_id() -> str:
    """The id of this run of the Redis server: a new one on every start and on failover."""
    return redis_client().info("server")["run_id"]


def is_loaded(*, run_id: str | None = None) -> bool:
    ready = redis_client().get(READY_KEY)
    return ready is not None and ready.decode() == (run_id or server_run_id())


def mark_loaded(*, epoch: int) -> None:
    """Only for a Redis known to hold the database's counts (tests set up their own)."""
    redis_client().set(EPOCH_KEY, epoch)
    redis_client().set(READY_KEY, server_run_id())


def mark_not_loaded() -> None:
    redis_client().delete(READY_KEY)


def tokens_reserved_before(*, cutoff_ms: int, offset: int = 0, limit: int | None = None) -> list[str]:
    """Tracked reservations made before `cutoff_ms`, oldest first (`limit` of them, after `offset`)."""
    page = {"start": offset, "num": limit} if limit else {}
    return [t.decode() for t in redis_client().zrangebyscore(RESERVATIONS_KEY, "-inf", cutoff_ms, **page)]


def tracked_reservations() -> int:
    """Reservations Redis tracks: in flight, or sold and not yet forgotten (every few seconds)."""
    return int(redis_client().zcard(RESERVATIONS_KEY))


def forget(*, tokens: list[str]) -> int:
    """Stop tracking reservations the database shows SOLD."""
    return int(run_script("forget", keys=[RESERVATIONS_KEY], args=[RESERVATION_PREFIX, *tokens]))


@dataclass(frozen=True)
class Snapshot:
    available: dict[int, int | None]
    reservations: dict[str, dict[int, int]]


def snapshot(*, product_ids: list[int]) -> Snapshot:
    stock, flat = run_script("snapshot", keys=[RESERVATIONS_KEY], args=[STOCK_PREFIX, RESERVATION_PREFIX, *product_ids])
    reservations: dict[str, dict[int, int]] = {}
    for i in range(0, len(flat), 2):
        items = flat[i + 1]
        reservations[flat[i].decode()] = {int(items[j]): int(items[j + 1]) for j in range(0, len(items), 2)}
    return Snapshot(
        available={pid: (int(v) if v is not None else None) for pid, v in zip(product_ids, stock, strict=True)},
        reservations=reservations,
    )


def repair(*, drifts: dict[int, int], forget_tokens: list[str], run_id: str, epoch: int) -> bool:
    """Apply reconciliation's result; stock counts as loaded (under `epoch`) afterwards unless
    the server restarted since `run_id` was read (then False)."""
    args: list[object] = [STOCK_PREFIX, RESERVATION_PREFIX, len(drifts), run_id, epoch]
    for product_id, drift in drifts.items():
        args += [product_id, drift]
    args += forget_tokens
    return bool(run_script("repair", keys=[RESERVATIONS_KEY, READY_KEY, EPOCH_KEY], args=args))

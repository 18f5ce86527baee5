"""The live available count in Redis: reservations by Lua script, and what reconciliation reads.

Keys (single Redis instance; the scripts build stock keys from a prefix):
    inv:stock:{product_id}   available units
    inv:resv:{token}         hash product_id -> quantity of one reservation
    inv:reservations         zset token -> reserved-at (ms): every reservation not yet forgotten
    inv:ready                the run id of the server that loaded stock from the database: absent
                             after data loss, another run's after a restart or failover
    inv:epoch                the database's stock epoch the counts were loaded under
    inv:limit:{product_id}   the product's purchase limit per holder (absent: none)
    inv:held:{product_id}    hash holder (user id) -> units held (paid or in flight), for a
                             product with a limit
    inv:move:{token}         hash product_id -> units of one move that put units in (a return,
                             a restock), u -> its holder: the marker that it was applied (move.lua)
    inv:moves                set of the applied moves reconciliation has not yet seen the
                             database acknowledge; a move leaves it, and its marker expires a
                             MOVE_MARKER_TTL_SECONDS later, once the database has
    inv:price:{product_id}   the price mirror, for an order accepted in Redis alone: the price in
                             minor units (a decimal integer) while the product is on sale, "off"
                             while it is not; absent: not known, the order takes the database's
                             path. Never shows a value older than the last committed change (see
                             inventory.services.product_update and docs/design.md)

A reservation hash may carry `o`, the id of the accepted order whose settler will record its sale
(orders' intake): reconciliation counts it in flight and never gives it back as abandoned.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django_redis import get_redis_connection

from kernel.redis_scripts import run_lua

STOCK_PREFIX = "inv:stock:"
RESERVATION_PREFIX = "inv:resv:"
RESERVATIONS_KEY = "inv:reservations"
READY_KEY = "inv:ready"
EPOCH_KEY = "inv:epoch"
LIMIT_PREFIX = "inv:limit:"
HELD_PREFIX = "inv:held:"
MOVE_PREFIX = "inv:move:"
MOVES_KEY = "inv:moves"
# How long a move's marker outlives its acknowledgement. The step that applies a move is sent
# right after its commit; a copy of it arriving later than this (a process frozen between its
# commit and its Redis call for a day) would find no marker and apply the move again.
MOVE_MARKER_TTL_SECONDS = 24 * 3600
PRICE_PREFIX = "inv:price:"
PRICE_OFF = "off"  # the mirror's value for a product not on sale
_PRICE_CHUNK = 1_000  # keys per MSET / DEL command when the mirror is written whole
_LUA_DIR = Path(__file__).parent / "lua"


@dataclass(frozen=True)
class AdmissionCounter:
    """A fixed-window counter the reservation counts and checks before it touches stock (a rate
    limit): at most `limit` reservations per `window_ms` under `key`. `scope` names it to the
    caller. Inventory knows nothing of what it counts (orders/limits.py builds them)."""

    key: str
    limit: int
    window_ms: int
    scope: str


@dataclass(frozen=True)
class ReserveResult:
    ok: bool
    epoch: int | None = None  # the stock epoch the units were reserved under
    loaded: bool = True
    failed_product_id: int | None = None
    available: int | None = None
    refused_by: AdmissionCounter | None = None  # a counter over its limit...
    retry_after_ms: int | None = None  # ...until its window ends
    limit: int | None = None  # the failed product's purchase limit...
    held: int | None = None  # ...and what the holder holds already


def redis_client():
    return get_redis_connection("default")


def run_script(name: str, *, keys: list[str], args: list[object], client=None):
    return run_lua(_LUA_DIR / f"{name}.lua", keys=keys, args=args, client=client)


def reservation_key(token: uuid.UUID | str) -> str:
    return f"{RESERVATION_PREFIX}{token}"


def reserve(
    *,
    token: uuid.UUID,
    quantities: dict[int, int],
    holder: int | None = None,
    counters: tuple[AdmissionCounter, ...] = (),
) -> ReserveResult:
    """One script: the admission counters, then stock and `holder`'s purchase limits (see
    reserve.lua)."""
    args: list[object] = [STOCK_PREFIX, str(token), int(time.time() * 1000), "" if holder is None else holder,
                          LIMIT_PREFIX, HELD_PREFIX, len(counters)]  # fmt: skip
    for counter in counters:
        args += [counter.limit, counter.window_ms]
    for product_id, quantity in sorted(quantities.items()):
        args += [product_id, quantity]
    keys = [READY_KEY, RESERVATIONS_KEY, reservation_key(token), EPOCH_KEY, *(c.key for c in counters)]
    result = run_script("reserve", keys=keys, args=args)
    if result[0] == 1:
        return ReserveResult(ok=True, epoch=int(result[1]))
    if result[0] == -1:
        return ReserveResult(ok=False, loaded=False)
    if result[0] == -2:
        return ReserveResult(ok=False, refused_by=counters[int(result[1]) - 1], retry_after_ms=int(result[2]))
    if result[0] == -3:
        return ReserveResult(ok=False, failed_product_id=int(result[1]), limit=int(result[2]), held=int(result[3]))
    return ReserveResult(ok=False, failed_product_id=int(result[1]), available=int(result[2]))


@dataclass(frozen=True)
class ReservationKeys:
    """The keys a script that reserves as reserve.lua does declares (orders' intake): the
    reservation's own, then four per product (stock, price mirror, purchase limit, holdings)."""

    head: list[str]  # ready flag, epoch, tracked-reservations zset, this reservation's hash
    per_product: list[str]


def reservation_keys(*, token: uuid.UUID | str, product_ids: Sequence[int]) -> ReservationKeys:
    per_product: list[str] = []
    for pid in product_ids:
        per_product += [f"{STOCK_PREFIX}{pid}", f"{PRICE_PREFIX}{pid}", f"{LIMIT_PREFIX}{pid}", f"{HELD_PREFIX}{pid}"]
    return ReservationKeys(head=[READY_KEY, EPOCH_KEY, RESERVATIONS_KEY, reservation_key(token)],
                           per_product=per_product)  # fmt: skip


def held_by_accepted_orders(*, tokens: list[str]) -> set[str]:
    """The reservations among `tokens` that an accepted order holds (field `o`): never abandoned."""
    pipe = redis_client().pipeline(transaction=False)
    for token in tokens:
        pipe.hexists(reservation_key(token), "o")
    return {token for token, held in zip(tokens, pipe.execute(), strict=True) if held}


def release(*, token: uuid.UUID | str) -> bool:
    return bool(
        run_script(
            "release", keys=[RESERVATIONS_KEY, reservation_key(token)], args=[STOCK_PREFIX, str(token), HELD_PREFIX]
        )
    )


def add_available(*, product_id: int, quantity: int) -> None:
    redis_client().incrby(f"{STOCK_PREFIX}{product_id}", quantity)


def shift_available(*, quantities: dict[int, int]) -> None:
    """Add each (signed) quantity to its product's count, in one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    for product_id, quantity in quantities.items():
        pipe.incrby(f"{STOCK_PREFIX}{product_id}", quantity)
    pipe.execute()


def move_key(token: uuid.UUID | str) -> str:
    return f"{MOVE_PREFIX}{token}"


def apply_moves(*, moves: dict[str, Units]) -> int:
    """Put the units of each move (token -> units and holder) into the counts, and off the
    holder's holdings of the products with a purchase limit, each move at most once (move.lua).
    Returns how many were applied now (not before)."""
    return int(run_script("move", keys=[MOVES_KEY], args=_move_args(moves)))


def _move_args(moves: dict[str, Units]) -> list[object]:
    args: list[object] = [STOCK_PREFIX, MOVE_PREFIX, LIMIT_PREFIX, HELD_PREFIX]
    for token, move in moves.items():
        args += [token, "" if move.holder is None else move.holder, len(move.items)]
        for product_id, quantity in move.items.items():
            args += [product_id, quantity]
    return args


def set_purchase_limit(*, product_id: int, limit: int | None) -> None:
    """The product's limit as reserve.lua reads it (reconciliation loads every product's too)."""
    if limit:
        redis_client().set(f"{LIMIT_PREFIX}{product_id}", limit)
    else:
        redis_client().delete(f"{LIMIT_PREFIX}{product_id}", f"{HELD_PREFIX}{product_id}")


def holdings(*, product_id: int) -> dict[int, int]:
    """Units each holder holds of a product with a purchase limit."""
    return {int(k): int(v) for k, v in redis_client().hgetall(f"{HELD_PREFIX}{product_id}").items()}


def available(*, product_ids: list[int]) -> dict[int, int | None]:
    if not product_ids:
        return {}
    values = redis_client().mget([f"{STOCK_PREFIX}{pid}" for pid in product_ids])
    return {pid: (int(v) if v is not None else None) for pid, v in zip(product_ids, values, strict=True)}


def price_key(product_id: int) -> str:
    return f"{PRICE_PREFIX}{product_id}"


def price_mirror_value(*, price: int, active: bool) -> str:
    """What inv:price:<id> holds for a product: its price while on sale, "off" otherwise."""
    return str(price) if active else PRICE_OFF


def prices_forget(*, product_ids: Sequence[int]) -> None:
    """Delete the products' mirror keys: orders then take the database's path for them."""
    if product_ids:
        redis_client().delete(*(price_key(pid) for pid in product_ids))


def prices_forget_all() -> int:
    """Delete every mirror key (a seed that replaces all products); returns how many."""
    client = redis_client()
    keys = list(client.scan_iter(f"{PRICE_PREFIX}*", count=1000))
    for start in range(0, len(keys), _PRICE_CHUNK):
        client.delete(*keys[start : start + _PRICE_CHUNK])
    return len(keys)


def prices_write(*, values: dict[int, str], gone: Sequence[int] = ()) -> None:
    """Set the mirror keys (product id -> price_mirror_value) and delete those of `gone`
    (products that no longer exist), in one round trip. Only from a read that still locks the
    rows (inventory.reconciliation.prices_mirror_load): a value written from anything else may be
    older than a change committed meanwhile."""
    pipe = redis_client().pipeline(transaction=False)
    items = list(values.items())
    for start in range(0, len(items), _PRICE_CHUNK):
        pipe.mset({price_key(pid): value for pid, value in items[start : start + _PRICE_CHUNK]})
    if gone:
        pipe.delete(*(price_key(pid) for pid in gone))
    pipe.execute()


def prices_mirrored(product_ids: Sequence[int]) -> dict[int, int | str | None]:
    """What the mirror says of each product: its price (an int) while on sale, PRICE_OFF
    ("off") while not, None when the key is absent (orders take the database's path)."""
    if not product_ids:
        return {}
    values = redis_client().mget([price_key(pid) for pid in product_ids])
    return {
        pid: None if value is None else PRICE_OFF if value == PRICE_OFF.encode() else int(value)
        for pid, value in zip(product_ids, values, strict=True)
    }


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


def oldest_tracked_ms() -> int | None:
    """When the oldest reservation Redis still tracks was made (ms), None if it tracks none."""
    oldest = redis_client().zrange(RESERVATIONS_KEY, 0, 0, withscores=True)
    return int(oldest[0][1]) if oldest else None


def tracked_reservations() -> int:
    """Reservations Redis tracks: in flight, or sold and not yet forgotten (every few seconds)."""
    return int(redis_client().zcard(RESERVATIONS_KEY))


def forget(*, tokens: list[str]) -> int:
    """Stop tracking reservations the database shows SOLD."""
    return int(run_script("forget", keys=[RESERVATIONS_KEY], args=[RESERVATION_PREFIX, *tokens]))


@dataclass(frozen=True)
class Units:
    """Units of products and whose they are: a tracked reservation's, or a move's."""

    items: dict[int, int]  # product id -> units
    holder: int | None


@dataclass(frozen=True)
class Snapshot:
    available: dict[int, int | None]
    reservations: dict[str, Units]
    holdings: dict[int, dict[int, int]]  # product id -> holder -> units, for the products asked
    moves: dict[str, Units]  # applied moves not yet acknowledged by the database


def _units(fields: list[bytes]) -> Units:
    items: dict[int, int] = {}
    holder = None
    for j in range(0, len(fields), 2):
        name = fields[j].decode()
        if name == "u":
            holder = int(fields[j + 1])
        elif name.isdigit():  # not h:{pid}, what the reservation added to the holder's holdings
            items[int(name)] = int(fields[j + 1])
    return Units(items=items, holder=holder)


def _by_token(flat: list) -> dict[str, Units]:
    return {flat[i].decode(): _units(flat[i + 1]) for i in range(0, len(flat), 2)}


def snapshot(*, product_ids: list[int], limited_ids: list[int] = ()) -> Snapshot:
    args = [STOCK_PREFIX, RESERVATION_PREFIX, HELD_PREFIX, MOVE_PREFIX, len(product_ids), *product_ids, *limited_ids]
    stock, reservations, held, moves = run_script("snapshot", keys=[RESERVATIONS_KEY, MOVES_KEY], args=args)
    return Snapshot(
        available={pid: (int(v) if v is not None else None) for pid, v in zip(product_ids, stock, strict=True)},
        reservations=_by_token(reservations),
        moves=_by_token(moves),
        holdings={
            pid: {int(fields[j]): int(fields[j + 1]) for j in range(0, len(fields), 2)}
            for pid, fields in zip(limited_ids, held, strict=True)
        },
    )


def repair(
    *,
    drifts: dict[int, int],
    forget_tokens: list[str],
    run_id: str,
    epoch: int,
    limits: dict[int, int | None] | None = None,
    holding_drifts: dict[tuple[int, int], int] | None = None,
    apply: dict[str, Units] | None = None,
    forget_moves: Sequence[str] = (),
) -> bool:
    """Apply reconciliation's result; stock counts as loaded (under `epoch`) afterwards unless
    the server restarted since `run_id` was read (then False). `limits`: product id -> its
    purchase limit (None: none, its holdings dropped); `holding_drifts`: (product id, holder)
    -> units to add; `apply`: committed moves the snapshot did not show applied, to apply unless
    their own step got there first (move.lua); `forget_moves`: moves the database has
    acknowledged.

    One MULTI/EXEC: no order runs between the shift by the drift and the moves it left out,
    and the moves find the limits loaded; a connection lost before EXEC changes nothing, and the
    next reconciliation computes it all again. Moves are applied after the holdings' drift, since
    a holding clipped at zero would not add up the other way round."""
    limits, holding_drifts = limits or {}, holding_drifts or {}
    args: list[object] = [STOCK_PREFIX, RESERVATION_PREFIX, len(drifts), run_id, epoch, LIMIT_PREFIX, HELD_PREFIX,
                          len(limits), len(holding_drifts)]  # fmt: skip
    for product_id, drift in drifts.items():
        args += [product_id, drift]
    for product_id, limit in limits.items():
        args += [product_id, limit or 0]
    for (product_id, holder), drift in holding_drifts.items():
        args += [product_id, holder, drift]
    args += forget_tokens
    pipe = redis_client().pipeline(transaction=True)
    run_script("repair", keys=[RESERVATIONS_KEY, READY_KEY, EPOCH_KEY], args=args, client=pipe)
    if apply:
        run_script("move", keys=[MOVES_KEY], args=_move_args(apply), client=pipe)
    if forget_moves:
        pipe.srem(MOVES_KEY, *forget_moves)
        for token in forget_moves:  # the marker stays a while: a late copy of its step finds it
            pipe.expire(move_key(token), MOVE_MARKER_TTL_SECONDS)
    return bool(pipe.execute()[0])

"""The live available count in Redis: reservations by Lua script, and what reconciliation reads.

Keys, per stock shard (inventory/shards.py: a hash tag; on a single Redis, one shard whose keys
carry no tag, as written here; with N shards each name carries its shard's tag, inv:{tag}:stock:7):
    inv:stock:{product_id}   available units
    inv:resv:{token}         hash product_id -> quantity of one reservation's units on the shard
    inv:reservations         zset token -> reserved-at (ms): every reservation not yet forgotten
    inv:ready                the run id of the server that loaded the shard from the database:
                             absent after data loss, another run's after a restart or failover
    inv:epoch                the shard's epoch in the database when its counts were loaded
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

An order whose products fall in several shards holds units on each, under one token: the
reservation is recorded only if every shard's epoch still holds, and a refusal on one shard gives
back what the others held (reserve). A reservation (or a move) of several shards is several
independent ones that share a token: each shard's reconciliation settles its own part, and the
database's SOLD or RELEASED row decides the fate of all of them at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django_redis import get_redis_connection

from inventory.shards import StockShard, by_shard, shard_of, stock_shards
from kernel.errors import REDIS_AWAY
from kernel.redis_scripts import run_lua
from kernel.retry import Backoff, RetryExhausted, retry_on_conflict

logger = logging.getLogger(__name__)

# How long a move's marker outlives its acknowledgement. The step that applies a move is sent
# right after its commit; a copy of it arriving later than this (a process frozen between its
# commit and its Redis call for a day) would find no marker and apply the move again.
MOVE_MARKER_TTL_SECONDS = 24 * 3600
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
    epochs: dict[str, int] | None = None  # shard tag -> the epoch the units were reserved under
    loaded: bool = True
    failed_product_id: int | None = None
    available: int | None = None
    refused_by: AdmissionCounter | None = None  # a counter over its limit...
    retry_after_ms: int | None = None  # ...until its window ends
    limit: int | None = None  # the failed product's purchase limit...
    held: int | None = None  # ...and what the holder holds already


def redis_client():
    """Where stock lives: the Redis Cluster STOCK_REDIS_CLUSTER names, else the one Redis."""
    if getattr(settings, "STOCK_REDIS_CLUSTER", ""):
        from kernel.redis_cluster import stock_cluster_client

        return stock_cluster_client()
    return get_redis_connection("default")


def run_script(name: str, *, keys: list[str], args: list[object], client=None):
    return run_lua(_LUA_DIR / f"{name}.lua", keys=keys, args=args, client=redis_client() if client is None else client)


def stock_key(product_id: int) -> str:
    return shard_of(product_id).stock_key(product_id)


def price_key(product_id: int) -> str:
    return shard_of(product_id).price_key(product_id)


def limit_key(product_id: int) -> str:
    return f"{shard_of(product_id).limit_prefix}{product_id}"


def held_key(product_id: int) -> str:
    return f"{shard_of(product_id).held_prefix}{product_id}"


def move_key(token: uuid.UUID | str, *, shard: StockShard) -> str:
    return f"{shard.move_prefix}{token}"


# --- Reserving and releasing ----------------------------------------------------------------


def reserve(
    *,
    token: uuid.UUID,
    quantities: dict[int, int],
    holder: int | None = None,
    counters: tuple[AdmissionCounter, ...] = (),
) -> ReserveResult:
    """The admission counters, then stock and `holder`'s purchase limits, all or nothing.

    On one shard, one script does it all (reserve.lua). With several shards the counters run
    first, on the one Redis (admit.lua: a cluster cannot run one script over keys of different
    slots), then each shard of the order's products is reserved in turn under the same token;
    a shard that refuses has the ones before it given back (release.lua). A crash between the
    steps leaves holds that reconciliation gives back after the grace period, as for any
    reservation whose order never committed."""
    groups = by_shard(quantities)
    bundled = len(stock_shards()) == 1
    if counters and not bundled:
        refused = _admit(counters)
        if refused is not None:
            return refused
    epochs: dict[str, int] = {}
    for shard, product_ids in groups.items():
        try:
            result = _reserve_on(shard, token=token, quantities={pid: quantities[pid] for pid in product_ids},
                                 holder=holder, counters=counters if bundled else ())  # fmt: skip
        except REDIS_AWAY:  # this shard may have reserved before its reply was lost: it is given back too
            _give_back(token, [done for done in groups if done.tag in epochs or done == shard])
            raise
        if not result.ok:
            _give_back(token, [done for done in groups if done.tag in epochs])
            return result
        epochs[shard.tag] = result.epochs[shard.tag]
    return ReserveResult(ok=True, epochs=epochs)


_GIVE_BACK = Backoff(max_attempts=3, base_ms=20, cap_ms=200)


def _give_back(token: uuid.UUID, shards: list[StockShard]) -> None:
    """The compensation of an order refused by one of its shards: release.lua gives each hold
    back at most once, so it is tried again on a Redis error. Holds still there after the last
    try are given back by reconciliation after the grace period, as any abandoned one."""
    if not shards:
        return

    def attempt() -> bool | None:
        try:
            release(token=token, shards=shards)
            return True
        except REDIS_AWAY:
            return None

    try:
        retry_on_conflict(attempt, backoff=_GIVE_BACK, on_conflict=lambda _: None)
    except RetryExhausted:
        logger.warning("could not give back the holds of reservation %s; reconciliation will", token)


def _admit(counters: tuple[AdmissionCounter, ...]) -> ReserveResult | None:
    args: list[object] = []
    for counter in counters:
        args += [counter.limit, counter.window_ms]
    result = run_lua(_LUA_DIR / "admit.lua", keys=[c.key for c in counters], args=args,
                     client=get_redis_connection("default"))  # fmt: skip
    if result[0] == -2:
        return ReserveResult(ok=False, refused_by=counters[int(result[1]) - 1], retry_after_ms=int(result[2]))
    return None


def _reserve_on(
    shard: StockShard,
    *,
    token: uuid.UUID,
    quantities: dict[int, int],
    holder: int | None,
    counters: tuple[AdmissionCounter, ...],
) -> ReserveResult:
    args: list[object] = [shard.stock_prefix, str(token), int(time.time() * 1000), "" if holder is None else holder,
                          shard.limit_prefix, shard.held_prefix, len(counters)]  # fmt: skip
    for counter in counters:
        args += [counter.limit, counter.window_ms]
    for product_id, quantity in sorted(quantities.items()):
        args += [product_id, quantity]
    keys = [shard.ready_key, shard.reservations_key, shard.reservation_key(token), shard.epoch_key,
            *(c.key for c in counters)]  # fmt: skip
    result = run_script("reserve", keys=keys, args=args)
    if result[0] == 1:
        return ReserveResult(ok=True, epochs={shard.tag: int(result[1])})
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


def reservation_keys(*, shard: StockShard, token: uuid.UUID | str, product_ids: Sequence[int]) -> ReservationKeys:
    """The keys of a reservation of `product_ids`, all on `shard`."""
    per_product: list[str] = []
    for pid in product_ids:
        per_product += [shard.stock_key(pid), shard.price_key(pid), f"{shard.limit_prefix}{pid}",
                        f"{shard.held_prefix}{pid}"]  # fmt: skip
    return ReservationKeys(head=[shard.ready_key, shard.epoch_key, shard.reservations_key,
                                 shard.reservation_key(token)], per_product=per_product)  # fmt: skip


def held_by_accepted_orders(*, shard: StockShard, tokens: list[str]) -> set[str]:
    """The reservations among `tokens` that an accepted order holds (field `o`): never abandoned."""
    pipe = redis_client().pipeline(transaction=False)
    for token in tokens:
        pipe.hexists(shard.reservation_key(token), "o")
    return {token for token, held in zip(tokens, pipe.execute(), strict=True) if held}


def release(*, token: uuid.UUID | str, shards: Iterable[StockShard]) -> bool:
    """Give back the reservation's units on each of `shards`, once; True if any were held."""
    released = False
    for shard in shards:
        keys = [shard.reservations_key, shard.reservation_key(token)]
        released |= bool(run_script("release", keys=keys, args=[shard.stock_prefix, str(token), shard.held_prefix]))
    return released


# --- Counts, moves, limits ------------------------------------------------------------------


def add_available(*, product_id: int, quantity: int) -> None:
    redis_client().incrby(stock_key(product_id), quantity)


def shift_available(*, quantities: dict[int, int]) -> None:
    """Add each (signed) quantity to its product's count, in one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    for product_id, quantity in quantities.items():
        pipe.incrby(stock_key(product_id), quantity)
    pipe.execute()


def apply_moves(*, moves: dict[str, Units]) -> int:
    """Put the units of each move (token -> units and holder) into the counts, and off the
    holder's holdings of the products with a purchase limit, each move at most once on each shard
    it touches (move.lua). Returns how many shards' parts of moves were applied now (not before)."""
    return sum(int(run_script("move", keys=[shard.moves_key], args=_move_args(shard, part)))
               for shard, part in moves_by_shard(moves).items())  # fmt: skip


def moves_by_shard(moves: dict[str, Units]) -> dict[StockShard, dict[str, Units]]:
    """Each move split into its part on each shard (the same token on each)."""
    parts: dict[StockShard, dict[str, Units]] = {}
    for token, move in moves.items():
        for shard, product_ids in by_shard(move.items).items():
            items = {pid: move.items[pid] for pid in product_ids}
            parts.setdefault(shard, {})[token] = Units(items=items, holder=move.holder)
    return parts


def _move_args(shard: StockShard, moves: dict[str, Units]) -> list[object]:
    args: list[object] = [shard.stock_prefix, shard.move_prefix, shard.limit_prefix, shard.held_prefix]
    for token, move in moves.items():
        args += [token, "" if move.holder is None else move.holder, len(move.items)]
        for product_id, quantity in move.items.items():
            args += [product_id, quantity]
    return args


def set_purchase_limit(*, product_id: int, limit: int | None) -> None:
    """The product's limit as reserve.lua reads it (reconciliation loads every product's too)."""
    if limit:
        redis_client().set(limit_key(product_id), limit)
    else:
        redis_client().delete(limit_key(product_id), held_key(product_id))


def holdings(*, product_id: int) -> dict[int, int]:
    """Units each holder holds of a product with a purchase limit."""
    return {int(k): int(v) for k, v in redis_client().hgetall(held_key(product_id)).items()}


def _get_each(keys: list[str]) -> list[bytes | None]:
    """GET of each key in one round trip per node (a cluster's MGET takes one slot only)."""
    pipe = redis_client().pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return pipe.execute()


def available(*, product_ids: list[int]) -> dict[int, int | None]:
    if not product_ids:
        return {}
    values = _get_each([stock_key(pid) for pid in product_ids])
    return {pid: (int(v) if v is not None else None) for pid, v in zip(product_ids, values, strict=True)}


# --- The price mirror -----------------------------------------------------------------------


def price_mirror_value(*, price: int, active: bool) -> str:
    """What inv:price:<id> holds for a product: its price while on sale, "off" otherwise."""
    return str(price) if active else PRICE_OFF


def prices_forget(*, product_ids: Sequence[int]) -> None:
    """Delete the products' mirror keys: orders then take the database's path for them."""
    pipe = redis_client().pipeline(transaction=False)
    for shard, pids in by_shard(product_ids).items():
        _delete(pipe, [shard.price_key(pid) for pid in pids])
    pipe.execute()


def _delete(pipe, keys: list[str]) -> None:
    """One DEL of keys of one shard. A cluster's pipeline refuses its own delete() of several
    keys (and mset()) but routes a plain command to the one slot of its keys."""
    if keys:
        pipe.execute_command("DEL", *keys)


def prices_forget_all() -> int:
    """Delete every mirror key (a seed that replaces all products); returns how many."""
    client = redis_client()
    pipe = client.pipeline(transaction=False)
    forgotten = 0
    for shard in stock_shards():
        keys = list(client.scan_iter(f"{_glob_escaped(shard.price_prefix)}*", count=1000))
        for start in range(0, len(keys), _PRICE_CHUNK):
            _delete(pipe, keys[start : start + _PRICE_CHUNK])
        forgotten += len(keys)
    pipe.execute()
    return forgotten


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def prices_write(*, values: dict[int, str], gone: Sequence[int] = ()) -> None:
    """Set the mirror keys (product id -> price_mirror_value) and delete those of `gone`
    (products that no longer exist), in one round trip per node. Only from a read that still
    locks the rows (inventory.reconciliation.prices_mirror_load): a value written from anything
    else may be older than a change committed meanwhile."""
    pipe = redis_client().pipeline(transaction=False)
    for shard, pids in by_shard(values).items():
        for start in range(0, len(pids), _PRICE_CHUNK):
            chunk = pids[start : start + _PRICE_CHUNK]
            pipe.execute_command("MSET", *(part for pid in chunk for part in (shard.price_key(pid), values[pid])))
    for shard, pids in by_shard(gone).items():
        _delete(pipe, [shard.price_key(pid) for pid in pids])
    pipe.execute()


def prices_mirrored(product_ids: Sequence[int]) -> dict[int, int | str | None]:
    """What the mirror says of each product: its price (an int) while on sale, PRICE_OFF
    ("off") while not, None when the key is absent (orders take the database's path)."""
    if not product_ids:
        return {}
    values = _get_each([price_key(pid) for pid in product_ids])
    return {
        pid: None if value is None else PRICE_OFF if value == PRICE_OFF.encode() else int(value)
        for pid, value in zip(product_ids, values, strict=True)
    }


# --- Whether a shard is loaded, and what reconciliation reads ----------------------------


def server_run_id(shard: StockShard) -> str:
    """The id of this run of the Redis server that holds the shard: a new one on every start and
    on failover."""
    return run_script("run_id", keys=[shard.ready_key], args=[]).decode()


def is_loaded(shard: StockShard, *, run_id: str | None = None, epoch: int | None = None) -> bool:
    """Whether the shard's counts are this server run's (and, given `epoch`, were loaded under
    that epoch: the database's, for reconciliation)."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.get(shard.ready_key)
    pipe.get(shard.epoch_key)
    ready, loaded_under = pipe.execute()
    if ready is None or ready.decode() != (run_id or server_run_id(shard)):
        return False
    return epoch is None or (loaded_under is not None and int(loaded_under) == epoch)


def mark_loaded(shard: StockShard, *, epoch: int) -> None:
    """Only for a Redis known to hold the database's counts (tests set up their own)."""
    redis_client().set(shard.epoch_key, epoch)
    redis_client().set(shard.ready_key, server_run_id(shard))


def mark_not_loaded() -> None:
    """Every shard needs a rebuild (tests, and a seed that replaces stock)."""
    pipe = redis_client().pipeline(transaction=False)
    for shard in stock_shards():
        pipe.delete(shard.ready_key)
    pipe.execute()


def tokens_reserved_before(
    shard: StockShard, *, cutoff_ms: int, offset: int = 0, limit: int | None = None
) -> list[str]:
    """The shard's tracked reservations made before `cutoff_ms`, oldest first (`limit` of them,
    after `offset`)."""
    page = {"start": offset, "num": limit} if limit else {}
    return [t.decode() for t in redis_client().zrangebyscore(shard.reservations_key, "-inf", cutoff_ms, **page)]


def oldest_tracked_ms() -> int | None:
    """When the oldest reservation Redis still tracks was made (ms), None if it tracks none."""
    pipe = redis_client().pipeline(transaction=False)
    for shard in stock_shards():
        pipe.zrange(shard.reservations_key, 0, 0, withscores=True)
    oldest = [int(found[0][1]) for found in pipe.execute() if found]
    return min(oldest) if oldest else None


def tracked_reservations() -> int:
    """Reservations Redis tracks: in flight, or sold and not yet forgotten (every few seconds);
    one of several shards counts once per shard."""
    pipe = redis_client().pipeline(transaction=False)
    for shard in stock_shards():
        pipe.zcard(shard.reservations_key)
    return sum(int(count) for count in pipe.execute())


@dataclass(frozen=True)
class ShardState:
    """What the operator sees of one shard (/metrics, the operator page)."""

    shard: StockShard
    loaded: bool
    tracked: int  # reservations it tracks


def shard_states() -> list[ShardState]:
    states = []
    for shard in stock_shards():
        states.append(ShardState(shard=shard, loaded=is_loaded(shard),
                                 tracked=int(redis_client().zcard(shard.reservations_key))))  # fmt: skip
    return states


def forget(shard: StockShard, *, tokens: list[str]) -> int:
    """Stop tracking, on the shard, reservations the database shows SOLD."""
    return int(run_script("forget", keys=[shard.reservations_key], args=[shard.reservation_prefix, *tokens]))


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


def snapshot(shard: StockShard, *, product_ids: list[int], limited_ids: list[int] = ()) -> Snapshot:
    """The shard's counts of `product_ids` (its own), reservations, holdings and applied moves."""
    args = [shard.stock_prefix, shard.reservation_prefix, shard.held_prefix, shard.move_prefix, len(product_ids),
            *product_ids, *limited_ids]  # fmt: skip
    stock, reservations, held, moves = run_script("snapshot", keys=[shard.reservations_key, shard.moves_key],
                                                  args=args)  # fmt: skip
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
    shard: StockShard,
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
    """Apply reconciliation's result to the shard (every product and move given is the shard's
    own); it counts as loaded (under `epoch`) afterwards unless its server restarted since
    `run_id` was read (then False). `limits`: product id -> its purchase limit (None: none, its
    holdings dropped); `holding_drifts`: (product id, holder) -> units to add; `apply`: committed
    moves the snapshot did not show applied, to apply unless their own step got there first
    (move.lua); `forget_moves`: moves the database has acknowledged.

    One MULTI/EXEC, on the shard's one slot: no order runs between the shift by the drift and
    the moves it left out, and the moves find the limits loaded; a connection lost before EXEC
    changes nothing, and the next reconciliation computes it all again. Moves are applied after
    the holdings' drift, since a holding clipped at zero would not add up the other way round."""
    limits, holding_drifts = limits or {}, holding_drifts or {}
    args: list[object] = [shard.stock_prefix, shard.reservation_prefix, len(drifts), run_id, epoch,
                          shard.limit_prefix, shard.held_prefix, len(limits), len(holding_drifts)]  # fmt: skip
    for product_id, drift in drifts.items():
        args += [product_id, drift]
    for product_id, limit in limits.items():
        args += [product_id, limit or 0]
    for (product_id, holder), drift in holding_drifts.items():
        args += [product_id, holder, drift]
    args += forget_tokens
    pipe = redis_client().pipeline(transaction=True)
    run_script("repair", keys=[shard.reservations_key, shard.ready_key, shard.epoch_key], args=args, client=pipe)
    if apply:
        run_script("move", keys=[shard.moves_key], args=_move_args(shard, apply), client=pipe)
    if forget_moves:
        pipe.srem(shard.moves_key, *forget_moves)
        for token in forget_moves:  # the marker stays a while: a late copy of its step finds it
            pipe.expire(move_key(token, shard=shard), MOVE_MARKER_TTL_SECONDS)
    return bool(pipe.execute()[0])

"""Stock shards: which Redis keys hold a product's stock, and which keys travel together.

A shard is a hash tag. Every key of a shard (its products' counts, prices, limits and holdings,
the reservations made on it, its ready flag and its epoch) carries the tag, so that one script
can touch all of them on a Redis Cluster, where a script may only touch keys of one slot. A
product belongs to shard `product id mod STOCK_SHARDS`.

Why by product, and not one slot per sale: a flash sale's load is its products', and a sale's
products on one slot would put the whole sale on one master, the very limit sharding is for.
Spread by product, a sale of several products uses every master; an order of one product (the
seed's, and most of a flash sale's) is still one script on one slot, and only an order whose
products fall in different shards takes holds on each (inventory.redis_counts.reserve). See
docs/redis-cluster.md.

With one shard (the default, a single Redis) the keys are the untagged names they always had.
Each of N shards' tags is chosen so that it falls in the k-th of N even ranges of the cluster's
16384 slots: a cluster whose masters own even ranges (as devtools' own does) gets N/masters
shards each. The tag names N, so changing STOCK_SHARDS finds every shard unloaded and rebuilds
them from the database (only with the service stopped: see docs/redis-cluster.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@dataclass(frozen=True, slots=True)
class StockShard:
    """One shard's keys. `tag` is "" for the only shard of a single Redis."""

    index: int
    tag: str

    def _name(self, name: str) -> str:
        return f"inv:{{{self.tag}}}:{name}" if self.tag else f"inv:{name}"

    @property
    def stock_prefix(self) -> str:  # + product id: available units
        return self._name("stock:")

    @property
    def reservation_prefix(self) -> str:  # + token: hash product id -> units of one reservation
        return self._name("resv:")

    @property
    def reservations_key(self) -> str:  # zset token -> reserved at (ms), every tracked reservation
        return self._name("reservations")

    @property
    def ready_key(self) -> str:  # the run id of the server that loaded the shard
        return self._name("ready")

    @property
    def epoch_key(self) -> str:  # the shard's epoch in the database when it was loaded
        return self._name("epoch")

    @property
    def limit_prefix(self) -> str:  # + product id: its purchase limit
        return self._name("limit:")

    @property
    def held_prefix(self) -> str:  # + product id: hash holder -> units held
        return self._name("held:")

    @property
    def move_prefix(self) -> str:  # + token: the marker that a move was applied
        return self._name("move:")

    @property
    def moves_key(self) -> str:  # set of applied moves not yet acknowledged
        return self._name("moves")

    @property
    def price_prefix(self) -> str:  # + product id: the price mirror
        return self._name("price:")

    def reservation_key(self, token: object) -> str:
        return f"{self.reservation_prefix}{token}"

    def stock_key(self, product_id: int) -> str:
        return f"{self.stock_prefix}{product_id}"

    def price_key(self, product_id: int) -> str:
        return f"{self.price_prefix}{product_id}"


def _tag_in_range(count: int, index: int) -> str:
    """The first tag "<count>.<index>.<j>" whose slot is in the index-th of `count` even ranges."""
    low, high = index * REDIS_CLUSTER_HASH_SLOTS // count, (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    j = 0
    while not low <= key_slot(f"{count}.{index}.{j}".encode()) < high:
        j += 1
    return f"{count}.{index}.{j}"


@functools.cache
def _shards(count: int) -> tuple[StockShard, ...]:
    if count == 1:
        return (StockShard(index=0, tag=""),)
    return tuple(StockShard(index=k, tag=_tag_in_range(count, k)) for k in range(count))


def stock_shards() -> tuple[StockShard, ...]:
    return _shards(settings.STOCK_SHARDS)


def shard_of(product_id: int) -> StockShard:
    shards = stock_shards()
    return shards[product_id % len(shards)]


def shard_named(tag: str) -> StockShard:
    return next(shard for shard in stock_shards() if shard.tag == tag)


def by_shard(product_ids: Iterable[int]) -> dict[StockShard, list[int]]:
    """The product ids of each shard they fall in, shards and ids in order."""
    grouped: dict[StockShard, list[int]] = {}
    for pid in sorted(product_ids):
        grouped.setdefault(shard_of(pid), []).append(pid)
    return dict(sorted(grouped.items(), key=lambda item: item[0].index))

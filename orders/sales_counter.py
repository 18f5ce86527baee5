"""An example consumer of the order events: units sold per product, kept in Redis.

It reads the stream as the consumer group `sales-counter`, applies each event once (the
event id is remembered in the same Lua script that counts it) and acknowledges it after:
a consumer that dies before XACK gets the event again and skips it.

The remembered event ids are kept SALES_SEEN_EVENTS_RETENTION_SECONDS (trimmed by age, in
batches, by the consumer): a duplicate comes from the relay publishing again after a crash (at
its next run, a second later) or from our own unacknowledged events (at our restart), so only a
process down longer than the retention could have an event counted twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import redis
from django.conf import settings

from inventory.redis_counts import redis_client
from kernel.redis_scripts import run_lua
from orders import events

GROUP = "sales-counter"
SEEN_KEY = "sales:seen-events"
SALES_KEY = "sales:units-by-product"


COUNT_SALE_LUA = Path(__file__).parent / "lua" / "count_sale.lua"


def ensure_group() -> None:
    try:
        redis_client().xgroup_create(events.STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _sign(event_type: str, payload: dict) -> int:
    if event_type == events.PAID:
        return 1
    if event_type == events.CANCELLED and payload.get("previousStatus") == "PAID":
        return -1
    return 0


def apply(fields: dict[bytes, bytes]) -> bool:
    payload = orjson.loads(fields[b"payload"])
    event_type = fields[b"type"].decode()
    args: list[object] = [fields[b"eventId"].decode(), _sign(event_type, payload), int(time.time() * 1000)]
    for item in payload.get("items", []):
        args += [item["productId"], item["quantity"]]
    return bool(run_lua(COUNT_SALE_LUA, keys=[SEEN_KEY, SALES_KEY], args=args))


def consume(*, consumer: str = "counter-1", block_ms: int | None = 1000, count: int = 100) -> int:
    """Read and apply one batch: first our own unacknowledged events (after a crash), then new.
    `block_ms=None` returns at once when there is nothing new."""
    ensure_group()
    client = redis_client()
    applied = 0
    for start in ("0", ">"):
        response = client.xreadgroup(GROUP, consumer, {events.STREAM_KEY: start}, count=count, block=block_ms)
        for _stream, messages in response or []:
            for message_id, fields in messages:
                if fields:
                    applied += apply(fields)
                client.xack(events.STREAM_KEY, GROUP, message_id)
    return applied


def seen_events_trim(*, older_than_seconds: float | None = None, batch: int = 1_000) -> int:
    """Forget event ids first seen longer ago than the retention, `batch` at a time (each a short
    command, so Redis never stalls on a long trim). Returns how many were forgotten."""
    retention = settings.SALES_SEEN_EVENTS_RETENTION_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff_ms = int((time.time() - retention) * 1000)
    client = redis_client()
    if client.type(SEEN_KEY) != b"zset":  # none yet, or the old set: count_sale.lua converts it
        return 0
    forgotten = 0
    while old := client.zrangebyscore(SEEN_KEY, "-inf", cutoff_ms, start=0, num=batch):
        forgotten += client.zrem(SEEN_KEY, *old)
    return forgotten


def units_sold() -> dict[int, int]:
    return {int(k): int(v) for k, v in redis_client().hgetall(SALES_KEY).items()}

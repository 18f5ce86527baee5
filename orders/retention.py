"""What beat trims hourly (docs/retention.md), by name: each table and stream that grows with
every order, trimmed in batches. The sales consumer trims its own seen ids."""

from inventory.services import inventory_trim_reservations
from orders import idempotency
from orders.events import events_trim, stream_trim

TRIMS = {
    "events": events_trim,
    "stream": stream_trim,
    "idempotency": idempotency.purge_expired,
    "reservations": inventory_trim_reservations,
}

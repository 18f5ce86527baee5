import orjson
from django.core.management.base import BaseCommand
from django_redis import get_redis_connection

from orders.events import STREAM_KEY


class Command(BaseCommand):
    help = "Show the order events stream live (Ctrl-C to stop)."

    def add_arguments(self, parser):
        parser.add_argument("--from-start", action="store_true", help="replay the stream from its beginning")

    def handle(self, *args, **options):
        client = get_redis_connection("default")
        last_id = "0" if options["from_start"] else "$"
        self.stdout.write(f"following {STREAM_KEY} (Ctrl-C to stop)")
        try:
            while True:
                for _stream, messages in client.xread({STREAM_KEY: last_id}, block=1000, count=100) or []:
                    for message_id, fields in messages:
                        last_id = message_id
                        payload = orjson.loads(fields[b"payload"])
                        self.stdout.write(
                            f"{fields[b'createdAt'].decode()}  {fields[b'type'].decode():<22} "
                            f"order {fields[b'orderId'].decode():>8}  status {payload['status']:<15} "
                            f"paid {payload['paidAmount']}"
                        )
        except KeyboardInterrupt:
            return

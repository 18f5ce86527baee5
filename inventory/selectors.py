from django.db.models import QuerySet

from inventory import redis_counts
from inventory.errors import ProductNotFound
from inventory.models import Product


def product_list() -> QuerySet[Product]:
    return Product.objects.filter(active=True).order_by("id")


def product_get(*, product_id: int) -> Product:
    product = Product.objects.filter(pk=product_id, active=True).first()
    if product is None:
        raise ProductNotFound()
    return product


def with_live_stock(products: list[Product]) -> list[Product]:
    """Attach Redis's available count (one MGET for the page) as `live_stock`."""
    counts = redis_counts.available(product_ids=[p.id for p in products])
    for product in products:
        product.live_stock = max(counts.get(product.id) or 0, 0)
    return products

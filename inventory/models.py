import uuid

from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.BigIntegerField(help_text="In minor units.")
    active = models.BooleanField(default=True)
    purchase_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Units one customer may hold (paid or in flight), e.g. 2 per customer; empty: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_not_negative")]
        # Changing stock is its own right, apart from editing a product's name or price (change).
        permissions = [("adjust_stock", "Can restock or adjust stock")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"


class StockMovement(models.Model):
    """Append-only stock ledger: the database record of stock is the sum of a product's rows.

    Orders only insert rows here, so selling never locks or updates a product row (hot-row
    contention on products is what made the old design slow).
    """

    class Kind(models.TextChoices):
        RESTOCK = "RESTOCK", "Restock"
        SALE = "SALE", "Sale"
        RETURN = "RETURN", "Return (order cancelled)"
        ADJUSTMENT = "ADJUSTMENT", "Adjustment"

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="movements", db_index=False)
    quantity = models.BigIntegerField(help_text="Signed: negative takes units out.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reference = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    # The user whose order sold or returned the units (a user id, not a key: inventory does not
    # depend on accounts); purchase limits are counted from it. None for restocks and adjustments.
    holder = models.BigIntegerField(null=True, blank=True)
    # The move these rows belong to, when it puts units in (a return, a restock): Redis applies a
    # move at most once by this token (inventory/lua/move.lua), and reconciliation tells a move
    # not yet applied there from drift by it (PendingMove). None for sales and removals, which
    # go through a reservation instead.
    move_token = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["product", "kind"]),
            # Reconciliation looks up the moves Redis reports applied (a handful each run); only
            # the rows that put units in have a token, so the index stays small.
            models.Index(
                fields=["move_token"], name="stockmovement_move_token", condition=models.Q(move_token__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.quantity:+d} of product {self.product_id}"


class PendingMove(models.Model):
    """A move that put units in (a return, a restock), committed with its ledger rows, that
    reconciliation has not yet seen applied in Redis: until then a count short of it is pending,
    not drift. Reconciliation deletes the row once a snapshot showed both (the acknowledgement,
    committed before Redis forgets the move's marker), so the table holds only the last minute's
    moves and needs no trim."""

    token = models.UUIDField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"move {self.token}"


class StockReservation(models.Model):
    """The database's word on a Redis reservation: sold (the order committed) or released.

    The primary key is the arbiter between an order that commits late and reconciliation that
    gives up on it: whichever inserts the token first wins, the other fails.
    """

    class State(models.TextChoices):
        SOLD = "SOLD", "Sold"
        RELEASED = "RELEASED", "Released"

    token = models.UUIDField(primary_key=True, default=uuid.uuid4)
    state = models.CharField(max_length=8, choices=State.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # For the retention trim, which deletes the oldest rows a batch at a time (the primary
        # key is random: no range to walk). Appended at its right edge: cheap to keep.
        indexes = [models.Index(fields=["created_at"], name="stockreservation_created")]

    def __str__(self) -> str:
        return f"{self.token} {self.state}"


class StockShardEpoch(models.Model):
    """The generation of one stock shard's counts in Redis (inventory/shards.py): a rebuild of
    the shard bumps it first, and a reservation made under an older one is never recorded
    (inventory.queries.EPOCH_FENCE). A row per shard, made by its first load."""

    tag = models.CharField(max_length=32, primary_key=True)  # "" for the only shard of one Redis
    epoch = models.BigIntegerField()

    class Meta:
        db_table = "inventory_stock_shard"

    def __str__(self) -> str:
        return f"shard {self.tag or '(single)'}: epoch {self.epoch}"

from django.db import models


class Payment(models.Model):
    """Money taken from a user's balance for one order. One payment per order, by constraint:
    whatever retries or redeliveries happen, an order is charged at most once."""

    class Status(models.TextChoices):
        CAPTURED = "CAPTURED", "Captured"
        REFUNDED = "REFUNDED", "Refunded"

    order_id = models.BigIntegerField(unique=True, help_text="The order paid for (orders depend on payments).")
    user_id = models.BigIntegerField(db_index=True)
    amount = models.BigIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.CAPTURED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(amount__gte=0), name="payment_amount_not_negative")]

    def __str__(self) -> str:
        return f"payment {self.pk} for order {self.order_id}: {self.amount}"


class Refund(models.Model):
    payment = models.OneToOneField(Payment, on_delete=models.PROTECT, related_name="refund")
    amount = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"refund of payment {self.payment_id}: {self.amount}"

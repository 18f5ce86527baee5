from django.db import models


class Coupon(models.Model):
    class Kind(models.TextChoices):
        FIXED = "FIXED", "Fixed amount"
        PERCENT = "PERCENT", "Percent (with a cap)"

    code = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    value = models.BigIntegerField(help_text="Minor units for FIXED, whole percent (1-100) for PERCENT.")
    max_discount = models.BigIntegerField(null=True, blank=True, help_text="Cap for PERCENT, in minor units.")
    min_order_amount = models.BigIntegerField(default=0)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    usage_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Total uses; empty for no limit.")
    per_user_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Uses per user; empty for no limit.")
    times_used = models.PositiveIntegerField(default=0, editable=False)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(usage_limit__isnull=True) | models.Q(times_used__lte=models.F("usage_limit")),
                name="coupon_uses_within_limit",
            ),
            models.CheckConstraint(condition=models.Q(value__gt=0), name="coupon_value_positive"),
        ]

    def __str__(self) -> str:
        return self.code

    def discount_for(self, amount: int) -> int:
        if self.kind == self.Kind.FIXED:
            discount = self.value
        else:
            discount = amount * self.value // 100
            if self.max_discount is not None:
                discount = min(discount, self.max_discount)
        return min(discount, amount)


class CouponRedemption(models.Model):
    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="redemptions")
    user_id = models.BigIntegerField(db_index=True)
    reference = models.CharField(max_length=64, unique=True, help_text="The order it was used on, e.g. order:42.")
    discount = models.BigIntegerField()
    released = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["coupon", "user_id"])]

    def __str__(self) -> str:
        return f"{self.coupon_id} on {self.reference}"

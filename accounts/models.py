from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A customer or a staff member. Customers' money lives in `Account`."""


class Account(models.Model):
    """A user's balance in minor units. `version` is the optimistic lock: every change bumps it."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, primary_key=True, related_name="account")
    balance = models.BigIntegerField(default=0)
    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(balance__gte=0), name="account_balance_not_negative")]
        # Moving money is its own right, apart from seeing accounts (view) or editing them (change).
        permissions = [("adjust_balance", "Can top up or adjust a balance")]

    def __str__(self) -> str:
        return f"account of user {self.user_id}: {self.balance}"


class BalanceEntry(models.Model):
    """Append-only ledger: an account's balance always equals the sum of its entries."""

    class Kind(models.TextChoices):
        TOP_UP = "TOP_UP", "Top-up"
        PAYMENT = "PAYMENT", "Payment"
        REFUND = "REFUND", "Refund"
        ADJUSTMENT = "ADJUSTMENT", "Admin adjustment"

    # db_index=False here and below: a composite index leading with the column serves its lookups.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries", db_index=False)
    amount = models.BigIntegerField(help_text="Signed, in minor units: negative takes money out.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reference = models.CharField(max_length=64, blank=True, help_text="What caused it, e.g. payment:42.")
    balance_after = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "balance entries"
        indexes = [models.Index(fields=["account", "-id"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d} ({self.reference})"


class ApiToken(models.Model):
    """An opaque bearer token, stored as the SHA-256 of the token: the token itself is shown once,
    when it is made, and is nowhere in the database. A hash of 256 random bits needs no salt
    nor slow hashing (nothing to guess), so a lookup costs one index probe and no password hash.
    """

    key_hash = models.CharField(max_length=64, help_text="SHA-256 hex of the token.")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("revoke_apitoken", "Can revoke API tokens")]
        # A constraint rather than unique=True: no second (LIKE) index, never used for hashes.
        constraints = [models.UniqueConstraint(fields=["key_hash"], name="accounts_apitoken_key_hash_unique")]

    def __str__(self) -> str:
        return f"token …{self.key_hash[-8:]} of user {self.user_id}"


class BalanceAdjustmentRequest(models.Model):
    """A credit an admin asked for above ADMIN_CREDIT_APPROVAL_THRESHOLD: applied only when a
    second admin approves it (accounts.services.balance_adjustment_approve), exactly once."""

    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        APPLIED = "APPLIED", "Approved and applied"
        REJECTED = "REJECTED", "Rejected"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="adjustment_requests")
    amount = models.BigIntegerField(help_text="In minor units; always a credit.")
    reason = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(User, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="balanceadjustmentrequest_credit"),
            # The second pair of eyes, in the table too: whoever asked never applies it.
            models.CheckConstraint(
                condition=~models.Q(status="APPLIED")
                | (models.Q(decided_by__isnull=False) & ~models.Q(decided_by=models.F("requested_by"))),
                name="balanceadjustmentrequest_applied_by_another",
            ),
        ]

    def __str__(self) -> str:
        return f"request {self.pk}: {self.amount:+d} to user {self.account_id} ({self.status})"

"""How a ledger row names the person who changed money or stock by hand (accounts and inventory
both write such rows, and neither imports the other)."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser

# A username may be 150 characters; a ledger reference is 64, and should keep room for the reason.
_NAME_CHARS = 24


def admin_reference(user: AbstractBaseUser) -> str:
    """`admin:alice (id 7)`: the name for whoever reads the ledger, the id because it stays true
    when the user is renamed."""
    return f"admin:{user.get_username()[:_NAME_CHARS]} (id {user.pk})"

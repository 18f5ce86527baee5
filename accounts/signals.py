"""A new password revokes the user's API tokens: whoever had the old one (and made tokens with
it) is out once the owner changes it, as Django already does for the owner's admin sessions."""

from __future__ import annotations

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import User
from accounts.services import token_revoke_all


@receiver(post_save, sender=User, dispatch_uid="accounts.revoke_tokens_on_password_change")
def revoke_tokens_on_password_change(sender, instance: User, created: bool, **kwargs) -> None:
    # set_password() keeps the new raw password in `_password` until save() passes it to
    # password_validation.password_changed(), Django's own "the password changed" hook (after
    # this signal). Every way Django changes a password goes through set_password (the admin's
    # forms, changepassword, the password-reset views), while the hash upgrade at login
    # (check_password's setter) clears `_password` before it saves: same password, no change.
    # A hash written to the column by other means (an UPDATE, `user.password = make_password()`)
    # is not seen here.
    if not created and instance._password is not None:
        token_revoke_all(user_id=instance.pk)

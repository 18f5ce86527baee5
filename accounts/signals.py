"""Receivers of the User model's signals: every user has an account, and a new password
revokes the user's API tokens."""

from __future__ import annotations

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import User
from accounts.services import account_open, token_revoke_all


@receiver(post_save, sender=User, dispatch_uid="accounts.open_account_for_new_user")
def open_account_for_new_user(sender, instance: User, created: bool, raw: bool = False, **kwargs) -> None:
    """Every user gets an account as it is first saved, whichever way it was made (the admin's
    "Add user" page and createsuperuser call no service of ours). Fixtures (`raw`) bring their
    own rows."""
    if created and not raw:
        account_open(user_id=instance.pk)


@receiver(post_save, sender=User, dispatch_uid="accounts.revoke_tokens_on_password_change")
def revoke_tokens_on_password_change(sender, instance: User, created: bool, **kwargs) -> None:
    """Whoever had the old password (and made tokens with it) is out once the owner changes it,
    as Django already does for the owner's admin sessions."""
    # set_password() keeps the new raw password in `_password` until save() passes it to
    # password_validation.password_changed(), Django's own "the password changed" hook (after
    # this signal). Every way Django changes a password goes through set_password (the admin's
    # forms, changepassword, the password-reset views), while the hash upgrade at login
    # (check_password's setter) clears `_password` before it saves: same password, no change.
    # A hash written to the column by other means (an UPDATE, `user.password = make_password()`)
    # is not seen here.
    if not created and instance._password is not None:
        token_revoke_all(user_id=instance.pk)

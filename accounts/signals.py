"""Receivers of the User model's signals: every user has an account, a new password revokes the
user's API tokens, and a deactivated or deleted user's tokens leave the Redis token map."""

from __future__ import annotations

from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from accounts.models import User
from accounts.services import account_open, token_forget_for_users, token_revoke_all


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


@receiver(post_save, sender=User, dispatch_uid="accounts.forget_tokens_of_inactive_user")
def forget_tokens_of_inactive_user(sender, instance: User, created: bool, raw: bool = False, **kwargs) -> None:
    """An inactive user's tokens are refused at once: the database already refuses them, and
    their entries in the Redis map go too (after the UPDATE, before the caller's commit: the
    admin saves in a transaction, which a RedisError here rolls back). Every save of an inactive
    user does it again, which costs one statement and one Redis call and is right whatever
    changed; an UPDATE that bypasses save() is not seen (as for passwords)."""
    if not created and not raw and not instance.is_active:
        token_forget_for_users(user_ids=[instance.pk])


@receiver(pre_delete, sender=User, dispatch_uid="accounts.forget_tokens_of_deleted_user")
def forget_tokens_of_deleted_user(sender, instance: User, **kwargs) -> None:
    """A deleted user's tokens leave the map while their rows still say which they are (the
    admin's delete and a queryset's delete() both send this for each user, inside the delete's
    transaction)."""
    token_forget_for_users(user_ids=[instance.pk])

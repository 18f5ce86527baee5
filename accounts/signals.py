"""Receivers connected in AccountsConfig.ready()."""

from accounts.services import account_open


def open_account_for_new_user(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    """Every user gets an account as it is first saved, whichever way it was made (the admin's
    "Add user" page and createsuperuser call no service of ours). Fixtures (`raw`) bring their
    own rows."""
    if created and not raw:
        account_open(user_id=instance.pk)

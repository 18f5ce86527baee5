"""The development password: one password for the seeded customers, to sign in to the shop on a
developer's machine.

`make run` gives it to every seeded customer who has no password (devtools/serve.py) and prints
it; `manage.py check --deploy` refuses a database where any user still has it (config/checks.py).
The database keeps its hash, as for any password; the password itself is stored nowhere: it is
derived from SECRET_KEY (HMAC), so each checkout has its own and `make run` can print it again.

Its hashes carry a fixed salt, DEVELOPMENT_SALT, for two reasons: one hash serves all the
customers (PBKDF2 at Django's iterations costs about 0.3 s a hash, minutes for 500 users one by
one), and the deploy check finds them by the salt alone, whichever SECRET_KEY made the password.
The salt is 23 characters long: Django re-salts (at the next login) a salt with less than 128
bits of entropy by its count, which would hide the hash from the check. Django also rehashes at
login when its PBKDF2 iterations change (a Django upgrade): such a hash gets a random salt, and
the check no longer sees it.
"""

from __future__ import annotations

from django.contrib.auth.hashers import make_password
from django.db.models import Q
from django.utils.crypto import salted_hmac

from accounts.models import User

DEVELOPMENT_SALT = "shopdevelopmentpassword"
SEEDED_WITHOUT_PASSWORD = "!"  # what seeding writes (loadtest/seeding.py): an unusable password


def development_password() -> str:
    """This checkout's development password: the same for every process with this SECRET_KEY."""
    return salted_hmac("accounts.development_password", "seeded customers").hexdigest()[:16]


def development_password_give(*, user_ids_below: int) -> int:
    """Give the development password to the customers (not staff) with an id below
    `user_ids_below` who have no password (SEEDED_WITHOUT_PASSWORD, as seeding leaves them) or an
    earlier development password (another SECRET_KEY's). A password a user set stays. Returns
    how many were given it.

    One UPDATE, so no save() and no signal: a customer's tokens (loadtest/tokens.json) stay
    valid, which a password change would revoke (accounts/signals.py)."""
    encoded = make_password(development_password(), salt=DEVELOPMENT_SALT)
    return (
        User.objects.filter(id__lt=user_ids_below, is_staff=False)
        .filter(Q(password=SEEDED_WITHOUT_PASSWORD) | _development_hash())
        .exclude(password=encoded)
        .update(password=encoded)
    )


def development_password_holders() -> int:
    """How many users have a development password, any checkout's (found by its salt)."""
    return User.objects.filter(_development_hash()).count()


def _development_hash() -> Q:
    return Q(password__contains=f"${DEVELOPMENT_SALT}$")

from django.db.models import Sum

from accounts.models import Account, BalanceEntry


def account_get(*, user_id: int) -> Account:
    return Account.objects.get(user_id=user_id)


def ledger_balance(*, user_id: int) -> int:
    return BalanceEntry.objects.filter(account_id=user_id).aggregate(total=Sum("amount"))["total"] or 0

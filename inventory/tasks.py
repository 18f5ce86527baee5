from celery import shared_task

from inventory.services import inventory_forget_sold, inventory_reconcile


@shared_task
def reconcile_inventory() -> int:
    return len(inventory_reconcile().drifted)


@shared_task
def forget_sold_reservations() -> int:
    return inventory_forget_sold()

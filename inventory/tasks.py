from celery import shared_task

from inventory.services import inventory_reconcile


@shared_task
def reconcile_inventory() -> int:
    return len(inventory_reconcile().drifted)

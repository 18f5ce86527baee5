"""Celery beat's periodic jobs of the operator pages (the apps keep their own in their tasks.py)."""

from celery import shared_task

from ops.operator import operator_history_record


# Named as it was when it lived in config/tasks.py: tasks queued under that name by beat or a
# worker of the previous release still run after a rolling deploy.
@shared_task(name="config.tasks.record_operator_history")
def record_operator_history() -> None:
    operator_history_record()

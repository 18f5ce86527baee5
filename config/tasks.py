"""Celery beat's periodic jobs of the project itself (the apps keep their own in their tasks.py)."""

from celery import shared_task

from config.operator import operator_history_record


@shared_task
def record_operator_history() -> None:
    operator_history_record()

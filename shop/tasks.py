"""Background tasks of the shop, run by the task worker (`python manage.py db_worker`)."""

import dataclasses
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django_tasks import task


@task()
def reconcile_stale_payments() -> dict:
    """Settle every PENDING order older than PAYMENT_RECONCILE_AFTER from the bank's answer.

    Every reservation enqueues one run for when its order has become that old, in its own
    transaction: however a checkout ends (a crash, a timeout, a database outage) its order
    is reconciled, and any other order left pending is swept up on the way.
    """
    from . import services  # Services import this module to enqueue it.

    report = services.reconcile_payments(older_than=settings.PAYMENT_RECONCILE_AFTER)
    return dataclasses.asdict(report)


def schedule_reconciliation() -> None:
    """Enqueue a reconciliation for when an order placed now is old enough to be asked about."""
    due = timezone.now() + timedelta(seconds=settings.PAYMENT_RECONCILE_AFTER + 1)
    reconcile_stale_payments.using(run_after=due).enqueue()

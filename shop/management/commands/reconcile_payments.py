from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from shop import services


class Command(BaseCommand):
    help = (
        "Ask the bank about every PENDING order older than --older-than seconds: charged ones become "
        "paid, the others are released (stock returned, order cancelled). Safe to run any number of times."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.PAYMENT_RECONCILE_AFTER,
            help="Only orders pending for longer than this many seconds (default: PAYMENT_RECONCILE_AFTER, "
            "%(default)s), so payments still being answered are left alone.",
        )

    def handle(self, *args, older_than: float, **options):
        if older_than < 0:
            raise CommandError("--older-than must be 0 or more seconds")
        report = services.reconcile_payments(older_than=older_than)
        self.stdout.write(
            f"Reconciled pending orders older than {older_than:g} s: "
            f"{report.paid} paid, {report.released} released, {report.unresolved} left for next time."
        )

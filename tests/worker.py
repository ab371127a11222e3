"""Run the task worker in the test process: what `python manage.py db_worker` does beside daphne."""

import signal

from django.core.management import call_command


def run_worker() -> None:
    """Run every task that is due now, then return (`db_worker --batch`), against the test database.

    Tests that call it need `django_db(transaction=True)`: the worker commits as it goes, and
    checks its connection between tasks, which it would close inside a test's transaction.
    """
    # The command installs its own SIGINT/SIGTERM handlers (graceful shutdown); give pytest its own back.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    try:
        call_command("db_worker", batch=True, reload=False, startup_delay=False, interval=0, verbosity=0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

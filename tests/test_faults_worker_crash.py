"""A task worker that dies in the middle of a task: the task is run again, once, by the next worker.

django-tasks-db marks a task RUNNING when a worker claims it and SUCCESSFUL or FAILED when it
ends. A worker killed in between (SIGKILL, the OOM killer, a power cut) used to leave the row
RUNNING forever, and nothing ran it again: that order's confirmation email was never sent.
`manage.py db_worker` (the project's, shop/management/commands/db_worker.py) now queues such
tasks again when it starts: those of a dead worker process of this machine at once, those of
a worker elsewhere (or of unknown form) once they have been RUNNING longer than a lease.

Delivery is at least once, not exactly once: a worker killed after the mail server took the
message but before the order noted the receipt (receipt_sent_at, written right after the
server's "250 queued") sends it again when the task runs again; a task run again after that
note sends nothing. The first test kills the worker while the server still holds its answer,
where a resend is right.
"""

import os
import secrets
import signal
import subprocess
import sys
from datetime import date, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from notifications import tasks
from shop import services as shop_services
from shop.management.commands.db_worker import worker_id_of
from shop.models import Order, Product
from shop.payments import Card
from tests.faults import _die_with_parent
from tests.live import BASE_DIR, current_database_url
from tests.worker import run_worker

pytestmark = pytest.mark.django_db(transaction=True)

APPROVED_CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


def pay(user):
    """A paid order of `user`: its confirmation email waits as a task (the account's address)."""
    product = Product.objects.create(name="Kettle", slug=f"kettle-{secrets.token_hex(4)}", price="12.50", stock=10)
    shop_services.add_to_cart(cart=shop_services.get_cart(user=user, create=True), product=product, quantity=1)
    return async_to_sync(shop_services.place_order)(
        user=user, checkout_token=secrets.token_urlsafe(24), card=APPROVED_CARD
    )


def email_task(order):
    return DBTaskResult.objects.get(
        task_path=tasks.send_order_confirmation.module_path, args_kwargs__kwargs__order_id=order.pk
    )


@pytest.fixture
def smtp_settings(settings, fake_smtp):
    """This process's worker (run_worker) sends through the fake mail server."""
    settings.EMAIL_BACKEND = SMTP_BACKEND
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", fake_smtp.port
    return fake_smtp


def start_worker(smtp_port: int) -> subprocess.Popen:
    """`manage.py db_worker` in a process of its own, on the test database, mailing through the fake server."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DATABASE_URL": current_database_url(),
        "DJANGO_EMAIL_BACKEND": SMTP_BACKEND,
        "DJANGO_EMAIL_HOST": "127.0.0.1",
        "DJANGO_EMAIL_PORT": str(smtp_port),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay", "--interval", "0.2"],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(os.getpid(), signal.SIGTERM),
    )


def test_an_email_whose_worker_was_killed_mid_send_goes_out_once_when_a_worker_starts_again(shopper, smtp_settings):
    smtp = smtp_settings
    order = pay(shopper)
    smtp.hold_next_data()  # The server sits on its answer to the message: the worker waits for "queued".

    worker = start_worker(smtp.port)
    try:
        held = smtp.held.wait(timeout=30)
    finally:
        worker.kill()  # SIGKILL, as the OOM killer would: no chance to write a result.
        output = worker.communicate(timeout=10)[0].decode(errors="replace")
    assert held, f"the worker never reached the mail server:\n{output[-3000:]}"
    smtp.release()
    left_behind = email_task(order).status

    run_worker()  # The next worker (`db_worker` at its start) finds the task its dead predecessor held.

    task = email_task(order)
    print(
        f"\n[worker killed mid-send] task after the kill: {left_behind}; after the next worker: {task.status}; "
        f"messages taken by the server: {len(smtp.accepted)}, abandoned by the killed worker: {len(smtp.abandoned)}"
    )
    assert left_behind == "RUNNING"
    assert [order.number in subject for subject in smtp.subjects()] == [True], smtp.subjects()
    assert task.status == "SUCCESSFUL" and task.return_value == {"sent": True}
    assert len(task.worker_ids) == 2  # The dead worker's claim, then the new one's.


def claim_by(order, worker: str, *, started_at) -> DBTaskResult:
    task = email_task(order)
    DBTaskResult.objects.filter(pk=task.pk).update(status="RUNNING", worker_ids=[worker], started_at=started_at)
    return task


def test_a_task_a_live_worker_of_this_machine_is_running_is_left_alone(shopper, smtp_settings):
    order = pay(shopper)
    sleeper = subprocess.Popen(["sleep", "30"])  # Stands for a live worker process of this machine.
    try:
        claim_by(order, worker_id_of(sleeper.pid), started_at=timezone.now() - timedelta(days=1))
        run_worker()
        assert email_task(order).status == "RUNNING"
        assert smtp_settings.accepted == []
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("worker", ["worker-7.internal:4242:123456", "8f1c0e6a2b7d4c1e9a3f5b6c7d8e9f0a"])
def test_a_task_of_a_worker_elsewhere_runs_again_only_once_its_lease_is_over(shopper, smtp_settings, worker):
    """A worker on another machine (or an id of another form) cannot be checked: the lease decides."""
    recent, old = pay(shopper), pay(shopper)
    claim_by(recent, worker, started_at=timezone.now() - timedelta(minutes=5))
    claim_by(old, worker, started_at=timezone.now() - timedelta(minutes=31))

    run_worker()

    assert email_task(recent).status == "RUNNING"
    assert email_task(old).status == "SUCCESSFUL"
    assert smtp_settings.subjects() == [f"Your order {old.number} is confirmed"]


def test_the_worker_names_itself_by_machine_and_process(shopper):
    order = pay(shopper)
    run_worker()
    [worker] = email_task(order).worker_ids
    assert worker == worker_id_of(os.getpid())
    assert worker.split(":")[1] == str(os.getpid())


def test_a_task_run_again_after_the_receipt_was_noted_sends_nothing(shopper, smtp_settings):
    """The worker died after the server took the email and the order noted it, before the task's result:
    the task run again finds the note and sends nothing."""
    order = pay(shopper)
    claim_by(order, "worker-7.internal:4242:123456", started_at=timezone.now() - timedelta(hours=1))
    Order.objects.filter(pk=order.pk).update(receipt_sent_to=shopper.email, receipt_sent_at=timezone.now())

    run_worker()

    task = email_task(order)
    assert task.status == "SUCCESSFUL" and task.return_value == {"sent": False, "reason": "already sent"}
    assert smtp_settings.accepted == []

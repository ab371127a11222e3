"""The order confirmation email is a task: enqueued in the order's transaction, sent by the worker, retried.

The worker runs in this process (`db_worker --batch`: every task that is due, then return)
against the test database, as `python manage.py db_worker` runs beside daphne. The mail
server is outside the project: tests swap the email backend to make it fail.
"""

import logging
import secrets
import smtplib
from datetime import date, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.mail.backends.locmem import EmailBackend as LocmemEmailBackend
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from notifications import tasks
from shop import services as shop_services
from shop.models import Order, Product
from shop.payments import Card
from tests.checkout_data import shipping_fields
from tests.worker import run_worker

pytestmark = pytest.mark.django_db(transaction=True)

APPROVED_CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")
EXPIRY = f"12/{(date.today().year + 2) % 100:02d}"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


class Rollback(Exception):
    pass


class DropsAfterAcceptingBackend(LocmemEmailBackend):
    """A mail server that takes the message, then fails at QUIT (smtplib raises that from close())."""

    def open(self):
        return True

    def close(self):
        raise smtplib.SMTPResponseException(421, b"Service not available, closing transmission channel")


def pay(user) -> Order:
    shop_services.add_to_cart(
        cart=shop_services.get_cart(user=user, create=True),
        product=make_kettle(),
        quantity=2,
    )
    return async_to_sync(shop_services.place_order)(
        user=user, checkout_token=secrets.token_urlsafe(24), card=APPROVED_CARD
    )


def make_kettle() -> Product:
    return Product.objects.create(name="Kettle", slug=f"kettle-{secrets.token_hex(4)}", price="12.50", stock=10)


def email_tasks():
    return DBTaskResult.objects.filter(task_path=tasks.send_order_confirmation.module_path).order_by("enqueued_at")


def waiting_retries():
    return email_tasks().filter(status="READY")


def let_the_backoff_pass() -> None:
    """Make the waiting retries due now: the clock moves on, the test does not sleep."""
    waiting_retries().update(run_after=timezone.now())


# Enqueued with the order ------------------------------------------------------------------


def test_confirmation_task_is_written_inside_the_order_transaction(shopper, mailoutbox):
    with transaction.atomic():
        order = pay(shopper)
        # Still inside the transaction: the row is there already, not deferred to on_commit.
        assert transaction.get_connection().in_atomic_block
        [row] = email_tasks()
        assert row.status == "READY"
        assert row.args_kwargs == {"args": [], "kwargs": {"order_id": order.pk, "attempt": 1}}

    assert email_tasks().count() == 1
    assert mailoutbox == []  # enqueued, not sent: only the worker sends


def test_rolled_back_order_leaves_no_email_task(shopper, mailoutbox):
    with pytest.raises(Rollback), transaction.atomic():
        pay(shopper)
        assert email_tasks().count() == 1
        raise Rollback

    assert not Order.objects.exists()
    assert not email_tasks().exists()
    run_worker()
    assert mailoutbox == []


def test_committed_order_leaves_exactly_one_email_task_and_the_worker_sends_it_once(shopper, mailoutbox):
    order = pay(shopper)

    assert email_tasks().count() == 1
    assert mailoutbox == []
    run_worker()
    run_worker()  # nothing left to do: a second run sends nothing more

    [email] = mailoutbox
    assert email.to == [shopper.email]
    assert email.subject == f"Your order {order.number} is confirmed"
    assert "2 x Kettle at €12.50 = €25.00" in email.body
    assert "Total: €25.00" in email.body
    [row] = email_tasks()
    assert (row.status, row.return_value) == ("SUCCESSFUL", {"sent": True})


def test_shopper_without_an_address_gets_no_email_task(shopper, mailoutbox):
    shopper.email = ""
    shopper.save()

    pay(shopper)
    run_worker()

    assert not email_tasks().exists()
    assert mailoutbox == []


def test_checkout_response_does_not_send_mail_itself(shopper, mailoutbox):
    client = Client()
    client.force_login(shopper)
    client.post("/cart/add/", {"product": make_kettle().pk, "quantity": 1})
    token = client.get("/checkout/").context["checkout_token"]

    response = client.post(
        "/checkout/",
        {**shipping_fields(), "number": "4242 4242 4242 4242", "expiry": EXPIRY, "cvc": "123", "checkout_token": token},
    )

    order = Order.objects.get(user=shopper)
    assert response.status_code == 302
    assert response.url == f"/orders/{order.number}/"
    assert mailoutbox == []  # the response went out; the email waits for the worker
    assert waiting_retries().count() == 1
    run_worker()
    [email] = mailoutbox
    assert order.number in email.subject


# Retries ------------------------------------------------------------------------------------


def test_failing_mail_server_is_retried_with_growing_backoff_and_sends_once_when_back(
    shopper, settings, mailoutbox, caplog
):
    settings.EMAIL_BACKEND = "tests.fakes.BrokenEmailBackend"
    order = pay(shopper)

    run_worker()  # attempt 1 fails
    assert mailoutbox == []
    [first, second] = email_tasks()
    assert second.args_kwargs["kwargs"] == {"order_id": order.pk, "attempt": 2}
    assert second.status == "READY"
    first_wait = second.run_after - first.finished_at
    assert timedelta(0) < first_wait <= tasks.retry_delay(1) + timedelta(seconds=1)
    assert first_wait >= tasks.retry_delay(1) - timedelta(seconds=1)

    run_worker()  # the retry is not due yet: the worker leaves it waiting
    assert list(waiting_retries()) == [second]

    let_the_backoff_pass()
    run_worker()  # attempt 2 fails too, and waits longer
    [*_, third] = email_tasks()
    assert third.args_kwargs["kwargs"]["attempt"] == 3
    assert third.run_after - timezone.now() > first_wait

    settings.EMAIL_BACKEND = LOCMEM  # the mail server is back
    let_the_backoff_pass()
    run_worker()
    let_the_backoff_pass()
    run_worker()

    [email] = mailoutbox
    assert email.subject == f"Your order {order.number} is confirmed"
    assert not waiting_retries().exists()
    assert email_tasks().count() == 3
    warnings = [record for record in caplog.records if record.name == "notifications.tasks"]
    assert [record.levelno for record in warnings] == [logging.WARNING, logging.WARNING]
    assert all(order.number in record.getMessage() for record in warnings)
    assert "SMTPServerDisconnected" in warnings[0].getMessage()


def test_worker_gives_up_after_the_last_attempt_and_logs_an_error(shopper, settings, mailoutbox, caplog):
    settings.EMAIL_BACKEND = "tests.fakes.BrokenEmailBackend"
    order = pay(shopper)

    for _ in range(tasks.MAX_ATTEMPTS + 2):  # bounded: two more rounds than there are attempts
        let_the_backoff_pass()
        run_worker()

    assert mailoutbox == []
    assert email_tasks().count() == tasks.MAX_ATTEMPTS
    assert not waiting_retries().exists()
    last = email_tasks().last()
    assert last.args_kwargs["kwargs"]["attempt"] == tasks.MAX_ATTEMPTS
    assert last.status == "FAILED"
    [error] = [
        record for record in caplog.records if record.levelno == logging.ERROR and record.name == "notifications.tasks"
    ]
    assert order.number in error.getMessage()
    assert f"after {tasks.MAX_ATTEMPTS} attempts" in error.getMessage()


def test_confirmation_already_sent_is_not_sent_again(shopper, mailoutbox):
    order = pay(shopper)
    run_worker()

    # A stray second task for the same order (a duplicate, a late retry) finds it sent.
    tasks.send_order_confirmation.enqueue(order_id=order.pk, attempt=2)
    run_worker()

    assert len(mailoutbox) == 1
    assert email_tasks().last().return_value == {"sent": False, "reason": "already sent"}


def test_failure_after_the_server_accepted_the_message_is_not_retried(shopper, settings, mailoutbox, caplog):
    settings.EMAIL_BACKEND = "tests.test_email_tasks.DropsAfterAcceptingBackend"
    order = pay(shopper)

    run_worker()
    let_the_backoff_pass()
    run_worker()

    [email] = mailoutbox  # the server has it: a retry would send it twice
    assert order.number in email.subject
    assert email_tasks().count() == 1
    assert not waiting_retries().exists()
    assert any("421" in record.getMessage() for record in caplog.records if record.name == "notifications.tasks")

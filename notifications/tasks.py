"""Background tasks of the notifications app, run by the task worker (`python manage.py db_worker`).

The order confirmation email is enqueued inside the order's transaction
(services.queue_order_confirmation), so its row commits or rolls back with the order and
waits in the database through crashes, restarts and deploys until a worker sends it. The
task reads the order from the database, so the email shows the order as committed.

django-tasks does not retry: a failed attempt enqueues the next one itself, later by a
growing backoff, up to MAX_ATTEMPTS; the last failure is logged as an error and left as a
FAILED task result (visible in the admin under Task Results).
"""

import contextlib
import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.template.loader import render_to_string
from django.utils import timezone
from django_tasks import TaskResultStatus, task
from django_tasks_db.models import DBTaskResult

from shop import services as shop_services
from shop.models import Order

logger = logging.getLogger(__name__)

# Waits after failed attempts 1..7: 30 s, 1, 2, 4, 8, 16, 30 min: a mail server may be away
# for about an hour before an email is given up.
MAX_ATTEMPTS = 8
FIRST_RETRY_DELAY = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(minutes=30)


def retry_delay(attempt: int) -> timedelta:
    """Return how long to wait after failed attempt number `attempt` (from 1) before the next one."""
    return min(FIRST_RETRY_DELAY * 2 ** (attempt - 1), MAX_RETRY_DELAY)


def build_order_confirmation(order: Order) -> EmailMessage:
    """Compose the confirmation email of a paid order."""
    body = render_to_string("notifications/email/order_confirmation.txt", {"order": order, "lines": order.lines.all()})
    return EmailMessage(
        subject=f"Your order {order.number} is confirmed",
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        # The address given at checkout, else the account's.
        to=[order.receipt_email],
    )


@task()
def send_order_confirmation(*, order_id: int, attempt: int = 1) -> dict:
    """Send the confirmation email of an order; on failure, enqueue the next attempt after a backoff.

    The attempt number travels in the task's arguments. A failed attempt that schedules a
    retry ends as a successful task whose result says so (one warning line, not a traceback:
    with the mail server down this happens for every order).
    """
    order = Order.objects.select_related("user").filter(pk=order_id).first()
    if order is None or not order.receipt_email:
        return {"sent": False, "reason": "no order or no address"}
    # receipt_sent_at: a run whose worker died after the server took the email and the order
    # noted it, but before its own result was written, is run again and must not resend.
    if order.receipt_sent_at is not None or confirmation_already_sent(order_id=order_id):
        logger.info("The confirmation email of order %s was already sent; not sending it again", order.number)
        return {"sent": False, "reason": "already sent"}
    message = build_order_confirmation(order)
    try:
        deliver(message)
    except Exception as error:
        if attempt >= MAX_ATTEMPTS:
            logger.error(
                "Gave up on the confirmation email of order %s after %d attempts: %r", order.number, attempt, error
            )
            raise
        delay = retry_delay(attempt)
        send_order_confirmation.using(run_after=timezone.now() + delay).enqueue(order_id=order_id, attempt=attempt + 1)
        logger.warning(
            "Could not send the confirmation email of order %s (attempt %d of %d: %r); retrying in %d s",
            order.number,
            attempt,
            MAX_ATTEMPTS,
            error,
            delay.total_seconds(),
        )
        return {"sent": False, "next_attempt": attempt + 1}
    try:
        # The order page says where the receipt went. The email is out either way: a failure
        # to note it must not fail the task (a FAILED result could lead to a second email).
        shop_services.record_receipt_sent(order_id=order.pk, sent_to=order.receipt_email)
    except Exception as error:
        logger.warning("Sent the confirmation email of order %s but could not note it: %r", order.number, error)
    return {"sent": True}


def confirmation_already_sent(*, order_id: int) -> bool:
    """Tell whether an earlier run of send_order_confirmation sent this order's email.

    The worker's task results are the record, so the shop's Order needs no flag for it: a
    duplicate or stray task for an order already confirmed sends nothing. (Two such tasks
    running at the same moment on two workers could still both send; only one task per
    order is ever enqueued, and each retry only after its predecessor has finished.)
    """
    return DBTaskResult.objects.filter(
        task_path=send_order_confirmation.module_path,
        status=TaskResultStatus.SUCCESSFUL,
        args_kwargs__kwargs__order_id=order_id,
        return_value__sent=True,
    ).exists()


def deliver(message: EmailMessage) -> None:
    """Hand one message to the mail server; raise only if it may not have been taken.

    The SMTP backend raises what goes wrong at QUIT from close(), after the server has
    accepted the message: retrying then would send it twice, so a failure to close an open
    connection after a successful send is only logged.
    """
    connection = get_connection()
    connection.open()
    try:
        connection.send_messages([message])
    except Exception:
        with contextlib.suppress(Exception):
            connection.close()
        raise
    try:
        connection.close()
    except Exception as error:
        logger.warning(
            "The mail server took %r for %s, then failed to close the connection (%r); not resending",
            message.subject,
            ", ".join(message.to),
            error,
        )

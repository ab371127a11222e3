"""notifications.services: the row and the email's task commit with the change, the push follows the commit.

The channel layer and the email backend are outside the project: tests replace them (through
the settings that select them) to watch what is sent and to make them fail or hang.
"""

import logging
import secrets
import smtplib
from datetime import date

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_tasks_db.models import DBTaskResult

from notifications import services, tasks
from notifications.models import Notification, NotificationStream
from shop import services as shop_services
from shop.models import Order
from shop.payments import Card, PaymentDeclined
from tests.fakes import BrokenLayer, HangingLayer, SpyLayer, use_layer, wait_until
from tests.worker import run_worker

APPROVED_CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")
DECLINED_CARD = Card(number="4000000000000002", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")


class Rollback(Exception):
    pass


@pytest.fixture
def spy_layer(settings):
    return use_layer(settings, SpyLayer)


def fill_cart(user, product, quantity=1):
    shop_services.add_to_cart(cart=shop_services.get_cart(user=user, create=True), product=product, quantity=quantity)


def pay(user, card=APPROVED_CARD) -> Order:
    return async_to_sync(shop_services.place_order)(user=user, checkout_token=secrets.token_urlsafe(24), card=card)


def email_tasks():
    return DBTaskResult.objects.filter(task_path=tasks.send_order_confirmation.module_path)


def notify_shopper(user, title="Hello"):
    return services.notify(
        recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title, body="Body", url="/orders/"
    )


# notify() ------------------------------------------------------------------------------


def test_notify_in_committed_transaction_writes_one_row_and_pushes_once(
    shopper, spy_layer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            notification = notify_shopper(shopper, title="Order ABC has shipped")
            assert spy_layer.group_sends == []  # nothing leaves before the commit

    assert list(Notification.objects.values_list("recipient", "kind", "title")) == [
        (shopper.pk, "order_shipped", "Order ABC has shipped")
    ]
    assert len(spy_layer.group_sends) == 1
    group, message = spy_layer.group_sends[0]
    assert group == f"notifications.user.{shopper.pk}"
    assert message["type"] == "notification.message"
    assert message["notification"]["id"] == notification.pk
    assert message["notification"]["title"] == "Order ABC has shipped"
    assert message["unread"] == 1


def test_push_after_commit_makes_no_database_query_and_carries_the_unread_count(
    shopper, spy_layer, django_capture_on_commit_callbacks, django_assert_num_queries
):
    """The count is read inside the notification's transaction; the push only sends (issue 8).

    Before: the push counted the unread notifications after commit, a query that opened a new
    PostgreSQL connection for every push.
    """
    notify_shopper(shopper, title="Earlier")
    with django_capture_on_commit_callbacks() as callbacks:
        with transaction.atomic():
            notify_shopper(shopper, title="Now")

    with django_assert_num_queries(0):
        for callback in callbacks:
            callback()

    assert spy_layer.group_sends[-1][1]["unread"] == 2


def test_a_notification_takes_its_number_in_one_statement_and_counts_unread_once(shopper, other_shopper):
    """notify() runs inside the change it tells about (a checkout's capture): every statement is
    the shopper's wait (issue 8, notify_overhead). Before: a SELECT ... FOR UPDATE of the stream,
    then an UPDATE of it; the UPDATE alone locks the row and hands the number back.
    """
    notify_shopper(shopper, title="Earlier")
    services.notify(recipient=other_shopper, kind=Notification.Kind.ORDER_SHIPPED, title="Not theirs")
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        notification = notify_shopper(shopper, title="Now")

    statements = [query["sql"] for query in queries.captured_queries if "SAVEPOINT" not in query["sql"]]
    on_stream = [sql for sql in statements if "notificationstream" in sql]
    assert len(on_stream) == 1 and on_stream[0].startswith("UPDATE"), "\n".join(statements)
    # The stream, the row, the recipient's email choice and its task, the unread count.
    assert len(statements) == 5, "\n".join(statements)
    assert notification.seq == 2
    assert services.Notification.objects.get(pk=notification.pk).seq == 2


def test_the_first_notification_of_a_user_starts_their_stream_at_one(shopper):
    with transaction.atomic():
        first = notify_shopper(shopper, title="First")
    second = notify_shopper(shopper, title="Second")

    assert (first.seq, second.seq) == (1, 2)
    assert NotificationStream.objects.last_seq(shopper.pk) == 2


def test_a_database_without_update_returning_still_numbers_the_stream(shopper, monkeypatch):
    """SQLite before 3.35 (Django 5.2 runs on 3.31) has no RETURNING: the lock-then-update path."""
    from notifications import models

    monkeypatch.setattr(models, "_has_update_returning", lambda alias: False)
    with CaptureQueriesContext(connection) as queries:
        first, second = notify_shopper(shopper, title="One"), notify_shopper(shopper, title="Two")

    assert (first.seq, second.seq) == (1, 2)
    assert not [query["sql"] for query in queries.captured_queries if 'RETURNING "last_seq"' in query["sql"]]


def test_notify_in_rolled_back_transaction_leaves_no_row_and_pushes_nothing(
    shopper, spy_layer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(Rollback), transaction.atomic():
            notify_shopper(shopper)
            raise Rollback

    assert callbacks == []
    assert not Notification.objects.exists()
    assert spy_layer.group_sends == []


@pytest.mark.django_db(transaction=True)
async def test_anotify_writes_the_row_and_pushes_from_async_code(shopper, spy_layer, close_worker_thread_connections):
    notification = await services.anotify(recipient=shopper, kind=Notification.Kind.ORDER_SHIPPED, title="Shipped")

    await wait_until(lambda: spy_layer.group_sends, timeout=2)
    assert await Notification.objects.filter(recipient=shopper, title="Shipped").acount() == 1
    [(group, message)] = spy_layer.group_sends
    assert group == f"notifications.user.{shopper.pk}"
    assert message["notification"]["id"] == notification.pk


# Checkout and status changes ------------------------------------------------------------


def test_paid_checkout_creates_one_order_placed_notification_and_pushes_once(
    shopper, other_shopper, make_product, spy_layer, django_capture_on_commit_callbacks
):
    fill_cart(shopper, make_product(name="Kettle"), quantity=2)

    with django_capture_on_commit_callbacks(execute=True):
        order = pay(shopper)

    assert order.status == Order.Status.PAID
    notification = Notification.objects.get()
    assert (notification.recipient, notification.kind) == (shopper, "order_placed")
    assert order.number in notification.title
    assert notification.url == f"/orders/{order.number}/"
    # Staff's live feed (live.staff) hears of the order too; the shopper's pushes are counted here.
    assert [group for group, _ in spy_layer.group_sends if group.startswith("notifications.")] == [
        f"notifications.user.{shopper.pk}"
    ]
    assert not Notification.objects.filter(recipient=other_shopper).exists()


def test_declined_checkout_creates_no_notification_and_pushes_nothing(
    shopper, make_product, spy_layer, mailoutbox, django_capture_on_commit_callbacks
):
    fill_cart(shopper, make_product())

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(PaymentDeclined):
        pay(shopper, DECLINED_CARD)

    assert not Notification.objects.exists()
    assert spy_layer.group_sends == []
    assert not email_tasks().exists()  # no confirmation email to send, ever
    assert mailoutbox == []


@pytest.mark.parametrize(
    ("statuses", "kind"),
    [
        (["shipped"], "order_shipped"),
        (["shipped", "delivered"], "order_delivered"),
        (["cancelled"], "order_cancelled"),
        (["refunded"], "order_refunded"),
    ],
)
def test_status_change_creates_one_notification_of_its_kind(
    statuses, kind, shopper, staff, make_product, spy_layer, django_capture_on_commit_callbacks
):
    fill_cart(shopper, make_product())
    with django_capture_on_commit_callbacks(execute=True):
        order = pay(shopper)

    for status in statuses:
        with django_capture_on_commit_callbacks(execute=True):
            order = shop_services.change_order_status(order=order, status=status, actor=staff)

    assert order.status == statuses[-1]
    notification = Notification.objects.get(kind=kind)
    assert notification.recipient == shopper
    assert order.number in notification.title
    # One order_placed, then one per status change, each pushed once to the buyer.
    assert Notification.objects.count() == 1 + len(statuses)
    assert [group for group, _ in spy_layer.group_sends if group.startswith("notifications.")] == [
        f"notifications.user.{shopper.pk}"
    ] * (1 + len(statuses))


# Dispatch failures ---------------------------------------------------------------------


def test_hanging_channel_layer_is_abandoned_after_the_dispatch_timeout_and_logged(
    shopper, settings, caplog, django_capture_on_commit_callbacks
):
    use_layer(settings, HangingLayer)
    settings.NOTIFICATIONS_DISPATCH_TIMEOUT = 0.2

    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            notification = notify_shopper(shopper)

    assert Notification.objects.filter(pk=notification.pk).exists()
    warnings = [record for record in caplog.records if record.name == "notifications.services"]
    assert [record.levelno for record in warnings] == [logging.WARNING]
    assert "timed out" in warnings[0].getMessage()
    assert f"notification {notification.pk}" in warnings[0].getMessage()


def test_failing_channel_layer_is_logged_and_not_raised(shopper, settings, caplog, django_capture_on_commit_callbacks):
    use_layer(settings, BrokenLayer)

    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            notification = notify_shopper(shopper)

    assert Notification.objects.filter(pk=notification.pk).exists()
    [record] = [record for record in caplog.records if record.name == "notifications.services"]
    assert record.levelno == logging.WARNING
    assert "failed" in record.getMessage()
    assert "ConnectionError" in record.getMessage()


# The confirmation email ---------------------------------------------------------------


def test_order_confirmation_email_is_a_task_of_the_order_transaction_not_sent_on_commit(
    shopper, make_product, mailoutbox, django_capture_on_commit_callbacks
):
    fill_cart(shopper, make_product(name="Kettle", price="12.50"), quantity=2)

    with django_capture_on_commit_callbacks() as callbacks:
        order = pay(shopper)
        assert email_tasks().count() == 1  # written with the order, before any commit

    for callback in callbacks:
        callback()
    assert mailoutbox == []  # nothing on commit sends it: the task worker does

    [task] = email_tasks()
    assert task.args_kwargs["kwargs"] == {"order_id": order.pk, "attempt": 1}


@pytest.mark.django_db(transaction=True)
def test_worker_sends_the_order_confirmation_email_once_committed(shopper, make_product, mailoutbox):
    fill_cart(shopper, make_product(name="Kettle", price="12.50"), quantity=2)
    order = pay(shopper)

    run_worker()

    [email] = mailoutbox
    assert email.to == [shopper.email]
    assert email.subject == f"Your order {order.number} is confirmed"
    assert "2 x Kettle at €12.50 = €25.00" in email.body
    assert "Total: €25.00" in email.body


def test_checkout_rolled_back_by_an_enclosing_transaction_sends_no_email_and_no_push(
    shopper, make_product, spy_layer, mailoutbox, django_capture_on_commit_callbacks
):
    product = make_product(stock=5)
    fill_cart(shopper, product)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(Rollback), transaction.atomic():
            pay(shopper)
            raise Rollback

    assert callbacks == []
    assert not email_tasks().exists()
    assert mailoutbox == []
    assert spy_layer.group_sends == []
    assert not Notification.objects.exists()
    assert not Order.objects.exists()
    product.refresh_from_db()
    assert product.stock == 5


@pytest.mark.django_db(transaction=True)
def test_failing_email_backend_does_not_break_checkout_and_is_logged(
    shopper, make_product, settings, spy_layer, caplog, mailoutbox
):
    settings.EMAIL_BACKEND = "tests.fakes.BrokenEmailBackend"
    fill_cart(shopper, make_product())

    order = pay(shopper)
    run_worker()

    assert order.status == Order.Status.PAID
    assert Notification.objects.filter(recipient=shopper, kind="order_placed").count() == 1
    assert len([group for group, _ in spy_layer.group_sends if group.startswith("notifications.")]) == 1
    assert mailoutbox == []
    [record] = [record for record in caplog.records if "Could not send the confirmation" in record.getMessage()]
    assert record.levelno == logging.WARNING  # one line; the retry is already scheduled
    assert order.number in record.getMessage()
    assert repr(smtplib.SMTPServerDisconnected("Connection unexpectedly closed")) in record.getMessage()
    assert email_tasks().filter(status="READY").count() == 1

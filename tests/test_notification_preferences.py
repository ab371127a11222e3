"""Notification preferences and the email for a notification left unread (issue 10).

The email is a task enqueued by notify() in the notification's own transaction, due
NOTIFICATIONS_EMAIL_AFTER_MINUTES later; the worker sends it only if the notification is
still unread, and never twice (the `emailed_at` marker is claimed by one conditional UPDATE).
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from notifications import escalation, services
from notifications.models import Notification, NotificationPreference
from tests.worker import run_worker


class Rollback(Exception):
    pass


def unread_email_tasks():
    return DBTaskResult.objects.filter(task_path=escalation.send_unread_email.module_path)


def notify(user, kind=Notification.Kind.ORDER_SHIPPED, title="Order ABC has shipped"):
    with transaction.atomic():
        return services.notify(recipient=user, kind=kind, title=title, body="It is on its way.", url="/orders/ABC/")


@pytest.fixture
def due_at_once(settings, in_memory_layer):
    """Unread emails fall due as soon as they are written, so the worker sends them now."""
    settings.NOTIFICATIONS_EMAIL_AFTER_MINUTES = 0


# Preferences -----------------------------------------------------------------------------------


def test_every_kind_goes_by_email_too_by_default_except_the_order_confirmation(shopper):
    preferences = escalation.email_preferences(user=shopper)

    assert preferences.pop(Notification.Kind.ORDER_PLACED) is False  # Its receipt email goes out at once.
    assert set(preferences.values()) == {True}
    assert Notification.Kind.BACK_IN_STOCK in preferences


def test_preferences_page_saves_a_choice_per_kind(shopper):
    client = Client()
    client.force_login(shopper)
    choices = {kind: "in_app" for kind in Notification.Kind.values}
    choices[Notification.Kind.BACK_IN_STOCK] = "email"

    page = client.get("/notifications/preferences/")
    response = client.post("/notifications/preferences/", choices)

    assert page.status_code == 200 and "if still unread after 30 minutes" in page.content.decode()
    assert response.status_code == 302
    saved = escalation.email_preferences(user=shopper)
    assert saved == {kind: kind == Notification.Kind.BACK_IN_STOCK for kind in Notification.Kind.values}
    assert NotificationPreference.objects.filter(user=shopper).count() == len(Notification.Kind.values)


def test_preferences_page_refuses_an_unknown_choice_and_needs_a_sign_in(shopper):
    client = Client()
    client.force_login(shopper)

    refused = client.post("/notifications/preferences/", {kind: "carrier-pigeon" for kind in Notification.Kind.values})
    anonymous = Client().get("/notifications/preferences/")

    assert refused.status_code == 400
    assert not NotificationPreference.objects.exists()
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_account_page_links_to_the_preferences(shopper):
    client = Client()
    client.force_login(shopper)

    assert 'href="/notifications/preferences/"' in client.get("/account/").content.decode()


# Scheduling at notify time ----------------------------------------------------------------------


def test_notify_enqueues_the_unread_email_due_after_the_configured_minutes(shopper, settings):
    settings.NOTIFICATIONS_EMAIL_AFTER_MINUTES = 30

    notification = notify(shopper)

    [task] = unread_email_tasks()
    assert task.args_kwargs["kwargs"] == {"notification_id": notification.pk}
    assert task.run_after == notification.created_at + timedelta(minutes=30)


def test_a_rolled_back_notification_leaves_no_email_task(shopper):
    with pytest.raises(Rollback), transaction.atomic():
        services.notify(recipient=shopper, kind=Notification.Kind.ORDER_SHIPPED, title="Shipped")
        raise Rollback

    assert not unread_email_tasks().exists()


def test_no_email_task_for_an_in_app_only_kind_or_a_user_without_an_address(shopper, make_user):
    escalation.set_email_preferences(user=shopper, by_email={Notification.Kind.ORDER_SHIPPED: False})
    no_address = make_user()
    no_address.email = ""
    no_address.save()

    notify(shopper)
    notify(no_address)
    notify(make_user(), kind=Notification.Kind.ORDER_PLACED)  # In-app only by default.

    assert not unread_email_tasks().exists()


# The worker -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_unread_notification_is_emailed_once_when_due(shopper, due_at_once, mailoutbox):
    notification = notify(shopper)

    run_worker()
    # A stray second task for the same notification (a duplicate enqueue, another worker) sends nothing.
    escalation.send_unread_email.enqueue(notification_id=notification.pk)
    run_worker()

    [email] = mailoutbox
    assert email.to == [shopper.email]
    assert email.subject == "Order ABC has shipped"
    assert "http://127.0.0.1:8000/orders/ABC/" in email.body
    notification.refresh_from_db()
    assert notification.emailed_at is not None
    results = sorted(task.return_value["sent"] for task in unread_email_tasks())
    assert results == [False, True]


@pytest.mark.django_db(transaction=True)
def test_a_notification_read_before_it_falls_due_is_not_emailed(shopper, due_at_once, mailoutbox):
    notification = notify(shopper)
    Notification.objects.filter(pk=notification.pk).update(read_at=timezone.now())

    run_worker()

    assert mailoutbox == []
    [task] = unread_email_tasks()
    assert task.return_value == {"sent": False, "reason": "read"}
    notification.refresh_from_db()
    assert notification.emailed_at is None


@pytest.mark.django_db(transaction=True)
def test_choosing_in_app_only_after_the_notification_skips_its_email(shopper, due_at_once, mailoutbox):
    notify(shopper)
    escalation.set_email_preferences(user=shopper, by_email={Notification.Kind.ORDER_SHIPPED: False})

    run_worker()

    assert mailoutbox == []


@pytest.mark.django_db(transaction=True)
def test_a_failing_mail_server_gives_the_marker_back_and_the_retry_sends_once(
    shopper, due_at_once, settings, mailoutbox
):
    notification = notify(shopper)
    settings.EMAIL_BACKEND = "tests.fakes.BrokenEmailBackend"

    run_worker()
    notification.refresh_from_db()
    assert notification.emailed_at is None  # Not taken by the server: the next attempt may claim it.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    unread_email_tasks().filter(status="READY").update(run_after=timezone.now())
    run_worker()

    assert len(mailoutbox) == 1
    notification.refresh_from_db()
    assert notification.emailed_at is not None


@pytest.mark.django_db(transaction=True)
def test_runs_racing_for_one_notification_send_one_email(shopper, due_at_once, mailoutbox):
    """Several runs for each notification at the same moment: the conditional UPDATE lets one send."""
    notifications = [notify(shopper, title=f"Order {number} has shipped") for number in range(10)]
    barrier = threading.Barrier(4)

    def run(notification_id):
        try:
            barrier.wait(timeout=10)
            return escalation.send_unread_email.call(notification_id=notification_id)["sent"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for notification in notifications:
            sent = list(pool.map(run, [notification.pk] * 4))
            assert sent.count(True) == 1

    assert sorted(email.subject for email in mailoutbox) == sorted(n.title for n in notifications)

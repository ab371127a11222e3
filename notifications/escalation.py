"""Notification preferences, and the email for a notification left unread.

Each user chooses, per kind, "in the app only" or "also by email". For the latter, notify()
enqueues a task in the notification's own transaction, due NOTIFICATIONS_EMAIL_AFTER_MINUTES
later; the task worker runs it then, and it emails the notification only if it is still
unread (and the user still wants it). The email is claimed by one conditional UPDATE that
sets `emailed_at` where it was empty and the notification unread: whoever sets it sends,
so a duplicate task, a retry or a second worker never sends a second email.
"""

import logging
from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django_tasks import task

from . import tasks
from .models import Notification, NotificationPreference

logger = logging.getLogger(__name__)

# Until a user chooses: every kind by email too, except the order confirmation, whose receipt
# email goes out at once anyway.
DEFAULT_BY_EMAIL: dict[str, bool] = {kind: kind != Notification.Kind.ORDER_PLACED for kind in Notification.Kind.values}


def email_delay() -> timedelta:
    """How long a notification stays unread before it is emailed."""
    return timedelta(minutes=settings.NOTIFICATIONS_EMAIL_AFTER_MINUTES)


def email_preferences(*, user) -> dict[str, bool]:
    """Return kind -> "also by email?" for `user`, defaults filled in."""
    chosen = dict(NotificationPreference.objects.filter(user=user).values_list("kind", "by_email"))
    return {kind: chosen.get(kind, default) for kind, default in DEFAULT_BY_EMAIL.items()}


def set_email_preferences(*, user, by_email: Mapping[str, bool]) -> None:
    """Record `user`'s choices (kind -> also by email); kinds left out keep their setting."""
    unknown = set(by_email) - set(DEFAULT_BY_EMAIL)
    if unknown:
        raise ValueError(f"Unknown notification kinds: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        for kind, wanted in by_email.items():
            NotificationPreference.objects.update_or_create(user=user, kind=kind, defaults={"by_email": bool(wanted)})


def wants_email(*, user_id: int, kind: str) -> bool:
    chosen = NotificationPreference.objects.filter(user_id=user_id, kind=kind).values_list("by_email", flat=True)
    answer = chosen.first()
    return DEFAULT_BY_EMAIL.get(kind, False) if answer is None else answer


def schedule_unread_email(notification: Notification) -> bool:
    """Enqueue the unread-notification email of `notification` if its recipient wants one.

    Called by notify() in the notification's transaction: the task row commits or rolls back
    with it. Return whether a task was enqueued.
    """
    return schedule_unread_emails([notification]) == 1


def schedule_unread_emails(notifications: list[Notification]) -> int:
    """schedule_unread_email() for many notifications, with one query for their recipients' choices.

    One notification gets its own task; a bulk of them (an admin action shipping thousands of
    orders) gets one task for all, which emails each that is still unread when it runs.
    Return how many emails were scheduled.
    """
    candidates = [notification for notification in notifications if notification.recipient.email]
    chosen = (
        dict(
            ((user_id, kind), by_email)
            for user_id, kind, by_email in NotificationPreference.objects.filter(
                user_id__in={notification.recipient_id for notification in candidates},
                kind__in={notification.kind for notification in candidates},
            ).values_list("user_id", "kind", "by_email")
        )
        if candidates
        else {}
    )
    wanted = [
        notification
        for notification in candidates
        if chosen.get((notification.recipient_id, notification.kind), DEFAULT_BY_EMAIL.get(notification.kind, False))
    ]
    if not wanted:
        return 0
    due = max(notification.created_at or timezone.now() for notification in wanted) + email_delay()
    if len(wanted) == 1:
        send_unread_email.using(run_after=due).enqueue(notification_id=wanted[0].pk)
    else:
        send_unread_emails.using(run_after=due).enqueue(notification_ids=[notification.pk for notification in wanted])
    return len(wanted)


def build_unread_email(notification: Notification) -> EmailMessage:
    body = render_to_string(
        "notifications/email/unread_notification.txt",
        {
            "notification": notification,
            "user": notification.recipient,
            "site_url": settings.SHOP_SITE_URL.rstrip("/"),
            "minutes": settings.NOTIFICATIONS_EMAIL_AFTER_MINUTES,
        },
    )
    return EmailMessage(
        subject=notification.title,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[notification.recipient.email],
    )


@task()
def send_unread_email(*, notification_id: int, attempt: int = 1) -> dict:
    """Email a notification that is still unread, once; a failing mail server is retried with a backoff."""
    notification = Notification.objects.select_related("recipient").filter(pk=notification_id).first()
    if notification is None:
        return {"sent": False, "reason": "deleted"}
    if notification.read_at is not None:
        return {"sent": False, "reason": "read"}
    if notification.emailed_at is not None:
        return {"sent": False, "reason": "already emailed"}
    if not notification.recipient.email or not wants_email(user_id=notification.recipient_id, kind=notification.kind):
        return {"sent": False, "reason": "not wanted"}
    claimed_at = timezone.now()
    # The marker, set atomically: only the one UPDATE that finds it empty (and the notification
    # unread) sends. A read committed a moment ago wins; a second task or worker finds it set.
    claimed = Notification.objects.filter(pk=notification_id, read_at__isnull=True, emailed_at__isnull=True).update(
        emailed_at=claimed_at
    )
    if not claimed:
        return {"sent": False, "reason": "read or already emailed"}
    try:
        tasks.deliver(build_unread_email(notification))
    except Exception as error:
        # The server did not take it (deliver() raises only then): give the marker back so the
        # next attempt can claim it, unless another run has set its own since.
        Notification.objects.filter(pk=notification_id, emailed_at=claimed_at).update(emailed_at=None)
        if attempt >= tasks.MAX_ATTEMPTS:
            logger.error("Gave up emailing notification %s after %d attempts: %r", notification_id, attempt, error)
            raise
        delay = tasks.retry_delay(attempt)
        send_unread_email.using(run_after=timezone.now() + delay).enqueue(
            notification_id=notification_id, attempt=attempt + 1
        )
        logger.warning(
            "Could not email notification %s (attempt %d of %d: %r); retrying in %d s",
            notification_id,
            attempt,
            tasks.MAX_ATTEMPTS,
            error,
            delay.total_seconds(),
        )
        return {"sent": False, "next_attempt": attempt + 1}
    return {"sent": True}


@task()
def send_unread_emails(*, notification_ids: list[int]) -> dict:
    """send_unread_email() for each of a bulk of notifications; a failing one retries on its own."""
    results = [send_unread_email.call(notification_id=notification_id) for notification_id in notification_ids]
    return {"sent": sum(1 for result in results if result.get("sent")), "of": len(notification_ids)}

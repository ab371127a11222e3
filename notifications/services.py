"""Create notifications and push them, without ever making the caller wait for the push.

notify() writes the row inside the caller's transaction and schedules the push on
commit; the push runs on the server's event loop, bounded by a timeout, and a failure is
only logged: the row stays and the next connect replays it. anotify() is the same for
async callers, which have no transaction to join.
"""

import asyncio
import contextvars
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from . import escalation, receipts, tasks
from .models import Notification, NotificationStream

logger = logging.getLogger(__name__)

_server_loop: asyncio.AbstractEventLoop | None = None
_background_tasks: set = set()


def user_group(user_id: int) -> str:
    """The channel-layer group of every socket of one user: built from the pk, never from input."""
    return f"notifications.user.{user_id}"


def session_group(session_key: str) -> str:
    """The group of one login session's sockets, closed when that session logs out."""
    return "notifications.session." + hashlib.sha256(session_key.encode()).hexdigest()[:32]


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Note the event loop the ASGI server runs on, so sync code can hand pushes to it."""
    global _server_loop
    _server_loop = loop


def run_in_background(make_coroutine: Callable[[], Awaitable]) -> None:
    """Start a coroutine without waiting for it, from sync or async code.

    Inside the server, sync code hands it to the server's loop (where the in-memory layer's
    queues live); outside any server (a management command, a sync test) there is no one to
    wait for, so it runs at once, still bounded by its own timeout.

    A started task gets a fresh context: copied from a thread-sensitive sync_to_async caller,
    asgiref's executor state would make the task's own ORM calls refuse to run ("would
    deadlock") or tie them to a request that has already ended.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:
        _start_task(running, make_coroutine)
        return
    loop = _server_loop
    if loop is not None and loop.is_running() and not loop.is_closed():
        loop.call_soon_threadsafe(_start_task, loop, make_coroutine)
        return
    async_to_sync(_run_logged)(make_coroutine)


def _start_task(loop: asyncio.AbstractEventLoop, make_coroutine: Callable[[], Awaitable]) -> None:
    task = contextvars.Context().run(loop.create_task, _run_logged(make_coroutine))
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


async def _run_logged(make_coroutine: Callable[[], Awaitable]) -> None:
    # Nobody awaits a background task: an error left in it would vanish without a trace.
    try:
        await make_coroutine()
    except Exception:
        logger.exception("A background push failed; the next connect replays what it carried")


async def _bounded_group_send(group: str, message: dict, *, what: str) -> bool:
    """Send to a group within the dispatch timeout; log and swallow any failure."""
    return await _bounded(get_channel_layer().group_send(group, message), what=f"{what} to {group}")


async def _bounded_group_send_many(messages: list[tuple[str, dict]], *, what: str) -> bool:
    """Send many group messages within the dispatch timeout, in order; log and swallow any failure.

    The Redis layer sends them all in one round trip (group_send_many); others one by one.
    """
    layer = get_channel_layer()
    if hasattr(layer, "group_send_many"):
        return await _bounded(layer.group_send_many(messages), what=what)

    async def one_by_one():
        for group, message in messages:
            await layer.group_send(group, message)

    return await _bounded(one_by_one(), what=what)


async def _bounded(sending: Awaitable, *, what: str) -> bool:
    try:
        await asyncio.wait_for(sending, timeout=settings.NOTIFICATIONS_DISPATCH_TIMEOUT)
        return True
    except asyncio.TimeoutError:
        logger.warning("Push of %s timed out; it will be replayed on the next connect", what)
    except Exception as error:
        # One line, not a traceback: with Redis down this happens on every order.
        logger.warning("Push of %s failed (%r); it will be replayed on the next connect", what, error)
    return False


def _push_message(notification: Notification, unread: int) -> dict:
    return {"type": "notification.message", "notification": notification.to_message(), "unread": unread}


async def adispatch(notification: Notification, unread: int | None = None) -> bool:
    """Push one notification, with the recipient's unread count, to all their sockets.

    notify() reads the count inside the notification's own transaction and hands it over, so
    the push itself makes no database call: no thread, no connection to open per push.
    """
    if unread is None:
        unread = await Notification.objects.for_user(notification.recipient_id).unread().acount()
    sent = await _bounded_group_send(
        user_group(notification.recipient_id),
        _push_message(notification, unread),
        what=f"notification {notification.pk}",
    )
    if sent:
        # The delivery receipt's "pushed" (admin), queued and written in batches off this path.
        await receipts.anote_pushed(notification.pk, server_loop=_server_loop)
    return sent


def dispatch(notification: Notification, unread: int | None = None) -> None:
    """Push a committed notification in the background; return at once."""
    run_in_background(lambda: adispatch(notification, unread))


# Pushes of a bulk per round trip to Redis: each chunk within the dispatch timeout, with room.
PUSH_CHUNK = 1000


async def adispatch_many(pushes: list[tuple[Notification, int]]) -> int:
    """Push many notifications (each with its unread count), in their order; return how many went out.

    A chunk of them is one round trip to Redis (a pipeline), and the chunks go one after
    another: Redis hands the messages of one connection to subscribers in the order it got
    them, so each user's frames arrive in their sequence order. A chunk that fails is logged
    and its notifications are replayed on the next connect, as for one push.
    """
    sent = 0
    for start in range(0, len(pushes), PUSH_CHUNK):
        chunk = pushes[start : start + PUSH_CHUNK]
        messages = [
            (user_group(notification.recipient_id), _push_message(notification, unread))
            for notification, unread in chunk
        ]
        if await _bounded_group_send_many(messages, what=f"{len(messages)} notifications"):
            sent += len(chunk)
            await receipts.anote_pushed_many([notification.pk for notification, _ in chunk], server_loop=_server_loop)
    return sent


@dataclass(frozen=True)
class Draft:
    """A notification to write: notify()'s arguments."""

    recipient: object  # a User
    kind: str
    title: str
    body: str = ""
    url: str = ""
    order: object = None  # a shop Order


def notify(*, recipient, kind: str, title: str, body: str = "", url: str = "", order=None) -> Notification:
    """Write a notification in the current transaction and push it once that commits.

    A rolled-back transaction leaves no row and pushes nothing. The recipient's unread count
    goes with the push: it is read here, on the transaction's open connection, while the stream
    lock keeps the user's other notifications waiting (a read in another tab meanwhile sends
    its own `unread` frame). Read after commit instead, each push opened a database connection.
    `order` links it to the order it tells about (the admin's delivery receipts); the email
    for it staying unread, if the recipient wants that kind by email, is enqueued here too.
    """
    [notification] = notify_many([Draft(recipient=recipient, kind=kind, title=title, body=body, url=url, order=order)])
    return notification


def notify_many(drafts: list[Draft]) -> list[Notification]:
    """notify() for many notifications in the current transaction, in a few statements.

    The same rows, sequence numbers, unread counts, unread emails and pushes as one notify()
    each, but the streams are locked and advanced together, the rows inserted together, and
    one background task pushes them all once the transaction commits (an admin action shipping
    5000 orders: one transaction, then every shopper told within moments of each other).
    """
    if not drafts:
        return []
    # Part of the caller's transaction (no savepoint: a failure here fails the change it tells
    # about), or a transaction of its own when there is none.
    with transaction.atomic(savepoint=False):
        per_recipient = Counter(draft.recipient.pk for draft in drafts)
        next_seq = NotificationStream.objects.claim_seqs(per_recipient)
        notifications = []
        for draft in drafts:
            seq = next_seq[draft.recipient.pk]
            next_seq[draft.recipient.pk] = seq + 1
            notifications.append(
                Notification(
                    recipient=draft.recipient,
                    kind=draft.kind,
                    title=draft.title,
                    body=draft.body,
                    url=draft.url,
                    order=draft.order,
                    seq=seq,
                )
            )
        Notification.objects.bulk_create(notifications, batch_size=1000)
        escalation.schedule_unread_emails(notifications)
        unread_now = dict(
            Notification.objects.filter(recipient_id__in=per_recipient)
            .unread()
            .values("recipient_id")
            .annotate(count=Count("pk"))
            .values_list("recipient_id", "count")
        )
    # Each push carries the count as it stood once its own notification was written.
    still_to_come = Counter(per_recipient)
    pushes = []
    for notification in notifications:
        still_to_come[notification.recipient_id] -= 1
        pushes.append(
            (notification, unread_now.get(notification.recipient_id, 0) - still_to_come[notification.recipient_id])
        )
    if len(pushes) == 1:
        transaction.on_commit(lambda: dispatch(*pushes[0]), robust=True)
    else:
        transaction.on_commit(lambda: run_in_background(lambda: adispatch_many(pushes)), robust=True)
    return notifications


async def anotify(*, recipient, kind: str, title: str, body: str = "", url: str = "", order=None) -> Notification:
    """Async twin of notify(): write the row, then push it in the background."""
    notification = await Notification.objects.acreate(
        recipient=recipient, kind=kind, title=title, body=body, url=url, order=order
    )
    await sync_to_async(escalation.schedule_unread_email)(notification)
    dispatch(notification)
    return notification


async def abroadcast_unread(user_id: int) -> None:
    """Tell every socket of a user their unread count (after a read in any tab)."""
    count = await Notification.objects.for_user(user_id).unread().acount()
    await _bounded_group_send(user_group(user_id), {"type": "unread.count", "count": count}, what="unread count")


async def amark_read(*, user_id: int, notification_id: int) -> bool:
    """Mark one of the user's notifications read; return False if it is not theirs."""
    found = await Notification.objects.for_user(user_id).filter(pk=notification_id).aexists()
    if not found:
        return False
    await (
        Notification.objects.for_user(user_id)
        .filter(pk=notification_id, read_at__isnull=True)
        .aupdate(read_at=timezone.now())
    )
    await abroadcast_unread(user_id)
    return True


async def amark_all_read(*, user_id: int) -> int:
    """Mark all of the user's notifications read; return how many were unread."""
    count = await Notification.objects.for_user(user_id).unread().aupdate(read_at=timezone.now())
    await abroadcast_unread(user_id)
    return count


async def amark_delivered(*, user_id: int, notification_id: int) -> bool:
    """Record that a browser of the user showed the notification; False if it is not theirs."""
    found = await Notification.objects.for_user(user_id).filter(pk=notification_id).aexists()
    if found:
        await (
            Notification.objects.for_user(user_id)
            .filter(pk=notification_id, delivered_at__isnull=True)
            .aupdate(delivered_at=timezone.now())
        )
    return found


def close_session_sockets(session_key: str) -> None:
    """Close every socket opened by one login session (it has just logged out)."""
    run_in_background(
        lambda: _bounded_group_send(session_group(session_key), {"type": "session.logout"}, what="logout")
    )


def recheck_user_sockets(user_id: int) -> None:
    """Once the current transaction commits, make every socket of a user re-validate its session.

    Sent when the user's row changes: a new password or a deactivation invalidates sessions,
    and their sockets must close now, not at their next heartbeat.
    """
    transaction.on_commit(
        lambda: run_in_background(
            lambda: _bounded_group_send(user_group(user_id), {"type": "session.recheck"}, what="session recheck")
        ),
        robust=True,
    )


def queue_order_confirmation(*, order_id: int) -> None:
    """Enqueue the order's confirmation email in the caller's transaction.

    The task backend writes its row at once, not on commit: the email commits or rolls back
    with the order, and once committed no crash or restart can lose it. The task worker
    sends it (and retries a failing mail server); the request never waits for the mail server.
    """
    tasks.send_order_confirmation.enqueue(order_id=order_id, attempt=1)

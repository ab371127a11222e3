"""Delivery receipts: when each notification was pushed, written off the push path.

A push itself makes no database call. On the server's loop (daphne) the "pushed" times are
queued and written by one writer task, shortly after, one UPDATE per batch: ids that arrive
while it waits or writes go into its next batch, so a burst of pushes (a restock telling a thousand
shoppers) costs a few queries. Pushes made outside a server (the task worker, a command)
have no loop that outlives them, and the push must not wait for a write: they are not
recorded. With the in-memory layer such a push reaches nobody anyway; with Redis the
browser's ack (`delivered_at`) still records the delivery that matters.

Receipts not yet written (the pushes of the last WRITE_DELAY_S, 0.5 s, and any batch still
queued or being written) are lost when daphne stops or restarts: nothing flushes them.
`pushed_at` is only shown to staff, so that is accepted: the notification, its delivery and
its ack and read receipts are unaffected; the admin shows it as not pushed, and "resend"
pushes an undelivered one again.
"""

import asyncio
import logging
from datetime import datetime

from asgiref.sync import sync_to_async
from django.db.models import Case, DateTimeField, Value, When
from django.utils import timezone

from .models import Notification

logger = logging.getLogger(__name__)

BATCH = 500
# The writer starts this long after the first push it records. Started at once, its thread
# built the UPDATE (Django's ORM, ~1 ms of CPU) while the push's frame was still on its way
# through the loop, and took the GIL from it: side by side, commit to frame at 1000 sockets
# p50 1.65 ms with the wait against 1.77 without. In a bulk of 5000 its ten UPDATEs ran in the
# middle of the delivery. The times written are the pushes' own, whenever the write happens;
# waiting also gathers more receipts per UPDATE.
WRITE_DELAY_S = 0.5

_pending: dict[int, datetime] = {}
_writer: asyncio.Task | None = None


async def anote_pushed(notification_id: int, *, server_loop: asyncio.AbstractEventLoop | None) -> None:
    """Note that a notification was handed to the channel layer just now; never waits for the database."""
    await anote_pushed_many([notification_id], server_loop=server_loop)


async def anote_pushed_many(notification_ids: list[int], *, server_loop: asyncio.AbstractEventLoop | None) -> None:
    """anote_pushed() for notifications pushed together (one round of a bulk), at one time."""
    loop = asyncio.get_running_loop()
    if loop is not server_loop:
        return
    now = timezone.now()
    for notification_id in notification_ids:
        _pending[notification_id] = now
    global _writer
    if _writer is None or _writer.done():
        _writer = loop.create_task(_write_pending())


async def _write_pending() -> None:
    await asyncio.sleep(WRITE_DELAY_S)
    while _pending:
        ids = list(_pending)[:BATCH]
        batch = {notification_id: _pending.pop(notification_id) for notification_id in ids}
        try:
            await sync_to_async(write_pushed)(batch)
        except Exception as error:  # The pushes are out; a receipt we cannot write fails nothing.
            logger.warning("Could not record %d push receipts: %r", len(batch), error)


def write_pushed(pushed: dict[int, datetime]) -> int:
    """Set `pushed_at` of each notification (id -> time) in one UPDATE; return the rows updated.

    Pushes made together (a bulk's round) share their time: one branch per distinct time, not
    per notification (a CASE of 500 branches cost about 5 ms of CPU to build, per batch).
    """
    if not pushed:
        return 0
    ids_at: dict[datetime, list[int]] = {}
    for notification_id, at in pushed.items():
        ids_at.setdefault(at, []).append(notification_id)
    if len(ids_at) == 1:
        [(at, ids)] = ids_at.items()
        return Notification.objects.filter(pk__in=ids).update(pushed_at=at)
    return Notification.objects.filter(pk__in=pushed).update(
        pushed_at=Case(
            *(When(pk__in=ids, then=Value(at)) for at, ids in ids_at.items()),
            output_field=DateTimeField(),
        )
    )

"""The notifications socket at /ws/notifications/. The protocol is described in the README."""

import json
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import services
from .models import Notification

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FLOODING = 4429
MAX_FRAME_CHARS = 4096
REPLAY_BATCH = 200


class TokenBucket:
    """Allow `rate` messages a second on average, bursts of up to `burst`."""

    def __init__(self, *, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def parse_notification_id(value) -> int | None:
    """Return `value` as a notification id, or None if it is not a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        # str.isdigit() also accepts "²" and other non-ASCII digits that int() refuses, and int()
        # refuses strings over 4300 digits: check ASCII and length before converting.
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            return None
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < 2**63 else None


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    rate_per_second = 10
    burst = 30
    # Past this many refused messages the client is not a browser tab that misbehaved.
    max_refusals = 100
    closing = False

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept first so the browser sees the code (a refused handshake shows only 1006)
            # and stops retrying; no group is joined.
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.rate_limit = TokenBucket(rate=self.rate_per_second, burst=self.burst)
        self.refusals = 0
        session = self.scope.get("session")
        self.subscriptions = [services.user_group(self.user_id)]
        if session is not None and session.session_key:
            self.subscriptions.append(services.session_group(session.session_key))
        # Join before reading the database: whatever commits after this is pushed, whatever
        # committed before is in the replay; the client drops the overlap by id.
        await self._join_groups()
        await self.accept()
        unread, last_id = await self._summary()
        await self.send_json({"type": "hello", "unread": unread, "last_id": last_id})
        after = parse_qs(self.scope.get("query_string", b"").decode()).get("after", [None])[0]
        if after is not None:
            await self._resume(after)

    async def disconnect(self, code):
        for group in getattr(self, "subscriptions", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if not hasattr(self, "user_id"):
            return  # An anonymous socket, already being closed.
        if self.closing:
            return  # Frames queued behind our close: nothing more to say to this client.
        if not self.rate_limit.take():
            self.refusals += 1
            if self.refusals > self.max_refusals:
                self.closing = True
                await self.close(code=CLOSE_FLOODING)
                return
            await self._error("rate_limited", "Too many messages; slow down.")
            return
        if text_data is None:
            await self._error("bad_frame", "Send JSON text frames.")
            return
        if len(text_data) > MAX_FRAME_CHARS:
            await self._error("too_large", f"Messages are limited to {MAX_FRAME_CHARS} characters.")
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self._error("bad_json", "The message is not valid JSON.")
            return
        if not isinstance(content, dict):
            await self._error("bad_message", "Send a JSON object with a type.")
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        handler = {
            "ping": self._ping,
            "resume": lambda: self._resume(content.get("after")),
            "ack": lambda: self._ack(content.get("id")),
            "read": lambda: self._read(content.get("id")),
            "read_all": self._read_all,
        }.get(content.get("type"))
        if handler is None:
            await self._error("unknown_type", f"Unknown message type {str(content.get('type'))[:40]!r}.")
            return
        await handler()

    # Client messages ------------------------------------------------------------------

    async def _ping(self):
        # Group membership expires (group_expiry); each heartbeat renews it.
        await self._join_groups()
        await self.send_json({"type": "pong"})

    async def _resume(self, after):
        after_id = parse_notification_id(after)
        if after_id is None:
            await self._error("bad_id", "`after` must be a notification id (a whole number).")
            return
        while batch := await self._notifications_after(after_id):
            for notification in batch:
                await self.send_json(notification.to_message())
            after_id = batch[-1].pk

    async def _ack(self, raw_id):
        if (notification_id := await self._checked_id(raw_id)) is None:
            return
        if not await services.amark_delivered(user_id=self.user_id, notification_id=notification_id):
            await self._error("not_found", f"No notification {notification_id} of yours.")

    async def _read(self, raw_id):
        if (notification_id := await self._checked_id(raw_id)) is None:
            return
        if not await services.amark_read(user_id=self.user_id, notification_id=notification_id):
            await self._error("not_found", f"No notification {notification_id} of yours.")

    async def _read_all(self):
        await services.amark_all_read(user_id=self.user_id)

    # Channel-layer events ---------------------------------------------------------------

    async def notification_message(self, event):
        await self.send_json(event["notification"])
        await self.send_json({"type": "unread", "count": event["unread"]})

    async def unread_count(self, event):
        await self.send_json({"type": "unread", "count": event["count"]})

    async def session_logout(self, event):
        await self.close(code=CLOSE_UNAUTHENTICATED)

    # Helpers ----------------------------------------------------------------------------

    async def _join_groups(self):
        for group in self.subscriptions:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _checked_id(self, raw_id) -> int | None:
        notification_id = parse_notification_id(raw_id)
        if notification_id is None:
            await self._error("bad_id", "`id` must be a notification id (a whole number).")
        return notification_id

    async def _error(self, code: str, detail: str):
        await self.send_json({"type": "error", "code": code, "detail": detail})

    @database_sync_to_async
    def _summary(self) -> tuple[int, int]:
        notifications = Notification.objects.for_user(self.user_id)
        newest = notifications.order_by("-pk").values_list("pk", flat=True).first()
        return notifications.unread().count(), newest or 0

    @database_sync_to_async
    def _notifications_after(self, after_id: int) -> list[Notification]:
        return list(Notification.objects.for_user(self.user_id).filter(pk__gt=after_id).order_by("pk")[:REPLAY_BATCH])

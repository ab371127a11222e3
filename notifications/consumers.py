"""The notifications socket at /ws/notifications/. The protocol is described in the README."""

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from . import services
from .middleware import _ReadOnlySession, handshake_database_call, session_user_id  # noqa: F401 - cart_consumers imports _ReadOnlySession here
from .models import Notification, NotificationStream

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FLOODING = 4429
# "Try again later": the channel layer (Redis) is unreachable; the client backs off. RFC 6455's
# own 1013 cannot be used: daphne (autobahn) sends only 1000 and 3000-4999 and turns any other
# code into a 1011 and a traceback. 4013 is its twin in the private-use range.
CLOSE_TRY_AGAIN_LATER = 4013
MAX_FRAME_CHARS = 4096
# A replay reads the history one page at a time: one query per page, never the whole history.
REPLAY_PAGE = 100


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
    # A resume reads the user's history: a tab needs one per connect and one per gap it
    # notices, while a loop of them costs the server a core. Each socket gets a few at once,
    # then one every 5 seconds.
    resume_rate_per_second = 0.2
    resume_burst = 5
    closing = False
    layer_failed = False

    async def dispatch(self, message):
        # Channels hops to a thread to close stale database connections before EVERY message,
        # for handlers that use the ORM directly; that hop also closed the connection the next
        # push's query would use. Only client frames (websocket.receive) reach the async ORM
        # here; the handshake and session checks go through database_sync_to_async, which
        # closes old connections itself, and layer events (pushes, counts, logout) carry what
        # they need. So a push costs no thread and no database call.
        if message["type"] == "websocket.receive":
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        user_id, session_key = self._identity()
        if user_id is None:
            # Accept first so the browser sees the code (a refused handshake shows only 1006)
            # and stops retrying; no group is joined.
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id, self.session_key = user_id, session_key
        self.rate_limit = TokenBucket(rate=self.rate_per_second, burst=self.burst)
        self.resume_budget = TokenBucket(rate=self.resume_rate_per_second, burst=self.resume_burst)
        self.refusals = 0
        self.subscriptions = [services.user_group(self.user_id)]
        if self.session_key:
            self.subscriptions.append(services.session_group(self.session_key))
        # Join before reading the database: whatever commits after this is pushed, whatever
        # committed before is in the replay; the client drops the overlap by id.
        if not await self._join_groups():
            # Accept first so the browser sees the code (a refused handshake is a 500 and a 1006).
            await self.accept()
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        await self.accept()
        unread, last_id, last_seq = await self._summary()
        await self.send_json({"type": "hello", "unread": unread, "last_id": last_id, "last_seq": last_seq})
        query = parse_qs(self.scope.get("query_string", b"").decode())
        if "after_seq" in query:
            await self._resume(query["after_seq"][0], by_seq=True)
        elif "after" in query:
            await self._resume(query["after"][0], by_seq=False)

    async def disconnect(self, code):
        try:
            await asyncio.wait_for(self._leave_groups(), timeout=settings.NOTIFICATIONS_SUBSCRIBE_TIMEOUT)
        except Exception:
            pass  # The layer is down or frozen: the membership expires by itself (group_expiry).

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
        except (ValueError, RecursionError):
            # RecursionError: a few thousand nested brackets fit well under the size limit.
            await self._error("bad_json", "The message is not valid JSON (or is nested too deeply).")
            return
        if not isinstance(content, dict):
            await self._error("bad_message", "Send a JSON object with a type.")
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        message_type = content.get("type")
        if not isinstance(message_type, str):
            # Never used as a dict key: {} or [] would raise TypeError (unhashable) and kill the socket.
            await self._error("unknown_type", "`type` must be a string naming a message type.")
            return
        handler = {
            "ping": self._ping,
            "resume": lambda: self._resume_message(content),
            "ack": lambda: self._ack(content.get("id")),
            "read": lambda: self._read(content.get("id")),
            "read_all": self._read_all,
        }.get(message_type)
        if handler is None:
            await self._error("unknown_type", f"Unknown message type {message_type[:40]!r}.")
            return
        await handler()

    # Client messages ------------------------------------------------------------------

    async def _ping(self):
        # The session was checked at the handshake only: a password change, a deactivation or
        # an expired or deleted session must end the socket too, at the latest on the next ping.
        valid, last_seq = await self._heartbeat()
        if not valid:
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        # Group membership expires (group_expiry); each heartbeat renews it.
        if not await self._join_groups():
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        # last_seq lets the client notice a push lost while the socket stayed open.
        await self.send_json({"type": "pong", "last_seq": last_seq})

    async def _resume_message(self, content: dict):
        if "after_seq" in content:
            await self._resume(content["after_seq"], by_seq=True)
        else:
            await self._resume(content.get("after"), by_seq=False)

    async def _resume(self, after, *, by_seq: bool):
        """Replay the user's notifications after a sequence number (or, the older contract, an id).

        Frames are handled one at a time, so a socket never runs two replays at once; the
        budget refuses a client that asks again and again.
        """
        cursor = parse_notification_id(after)
        if cursor is None:
            name, what = ("after_seq", "a sequence number") if by_seq else ("after", "a notification id")
            await self._error("bad_id", f"`{name}` must be {what} (a whole number).")
            return
        if not self.resume_budget.take():
            await self._error("rate_limited", "Too many resumes; wait a few seconds before resuming again.")
            return
        if by_seq:
            await self._replay_by_seq(cursor)
        else:
            await self._replay_by_id(cursor)

    async def _replay_by_seq(self, after_seq: int):
        # Up to the newest committed number, read first: every row up to it is committed (its
        # stream update commits with it). Anything later is pushed to this socket, already joined.
        upto = await NotificationStream.objects.alast_seq(self.user_id)
        cursor = after_seq
        while cursor < upto and (page := await self._page(seq__gt=cursor, seq__lte=upto, order="seq")):
            for notification in page:
                await self.send_json(notification.to_message())
            cursor = page[-1].seq
        # Tells the client that nothing up to last_seq is missing, even where a row was deleted.
        await self.send_json({"type": "replayed", "last_seq": max(upto, after_seq)})

    async def _replay_by_id(self, after_id: int):
        while page := await self._page(pk__gt=after_id, order="pk"):
            for notification in page:
                await self.send_json(notification.to_message())
            after_id = page[-1].pk

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
        await self._close(CLOSE_UNAUTHENTICATED)

    async def session_recheck(self, event):
        """The user's row changed (password, active flag): is this socket's session still valid?"""
        valid, _ = await self._heartbeat()
        if not valid:
            await self._close(CLOSE_UNAUTHENTICATED)

    async def layer_lost(self, event):
        if self.closing:
            return  # Already closing (a handshake that could not join its groups): said once.
        logger.warning(
            "Socket of user %s closed with %s: the channel layer failed (%s); the client reconnects later",
            self.user_id,
            CLOSE_TRY_AGAIN_LATER,
            event["error"],
        )
        await self._close(CLOSE_TRY_AGAIN_LATER)

    # The channel layer's receive, guarded -----------------------------------------------

    @property
    def channel_receive(self):
        return self._guarded_channel_receive

    @channel_receive.setter
    def channel_receive(self, receive):
        # Channels sets this to the layer's receive() and lets its exception end the consumer:
        # with Redis gone for longer than the connection's retries, every socket would die with
        # a 1011 and a traceback. Turn the failure into one event that closes with 4013 instead.
        async def guarded_receive():
            if self.layer_failed:
                await asyncio.Event().wait()  # Reported once; wait to be cancelled at close.
            try:
                return await receive()
            except Exception as error:
                self.layer_failed = True
                return {"type": "layer.lost", "error": f"{type(error).__name__}: {error}"[:200]}

        self._guarded_channel_receive = guarded_receive

    # Helpers ----------------------------------------------------------------------------

    async def _join_groups(self) -> bool:
        """Join (or renew) this socket's groups; False, after one log line, if the layer fails."""
        try:
            await asyncio.wait_for(self._group_add_all(), timeout=settings.NOTIFICATIONS_SUBSCRIBE_TIMEOUT)
            return True
        except Exception as error:  # Redis down, paused, or its connection pool exhausted.
            logger.warning(
                "Socket of user %s closed with %s: cannot join its channel-layer groups (%r); the client retries later",
                self.user_id,
                CLOSE_TRY_AGAIN_LATER,
                error,
            )
            return False

    async def _leave_groups(self):
        for group in getattr(self, "subscriptions", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _group_add_all(self):
        for group in self.subscriptions:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _close(self, code: int):
        if self.closing:
            return
        self.closing = True
        await self.close(code=code)

    async def _checked_id(self, raw_id) -> int | None:
        notification_id = parse_notification_id(raw_id)
        if notification_id is None:
            await self._error("bad_id", "`id` must be a notification id (a whole number).")
        return notification_id

    async def _error(self, code: str, detail: str):
        await self.send_json({"type": "error", "code": code, "detail": detail})

    async def _summary(self) -> tuple[int, int, int]:
        return await handshake_database_call(NotificationStream.objects.summary)(self.user_id)

    @database_sync_to_async
    def _page(self, *, order: str, **after) -> list[Notification]:
        return list(Notification.objects.for_user(self.user_id).filter(**after).order_by(order)[:REPLAY_PAGE])

    @database_sync_to_async
    def _heartbeat(self) -> tuple[bool, int]:
        """Whether this socket's login session is still valid, and the user's newest seq."""
        return self._session_is_valid(), NotificationStream.objects.last_seq(self.user_id)

    def _session_is_valid(self) -> bool:
        if not self.session_key:
            return True  # Authenticated some other way than a session cookie: nothing to re-check.
        # Read fresh from the store: the handshake's check says nothing about now.
        return session_user_id(self.session_key) == self.user_id

    def _identity(self) -> tuple[int | None, str | None]:
        """(user id, session key) from SocketSessionMiddleware, or from Channels' AuthMiddlewareStack."""
        if "user_id" in self.scope:
            return self.scope["user_id"], self.scope.get("session_key")
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is None or not user.is_authenticated:
            return None, None
        return user.pk, session.session_key if session is not None else None

"""Sockets of the live signals: /ws/cart/ (one session's cart) and /ws/staff/ (the staff feed).

Both only listen: a client may send `ping` (answered with `pong`, renewing the socket's groups
and re-checking that it is still allowed), nothing else. What a socket may hear is decided
once, at the handshake, from the server's own data: the cart socket joins the group of the
cart this session holds (the signed-in user's cart, or the anonymous session's), never one
named by the client; the staff socket joins the staff group only for a staff user, and
closes any other with 4403 before joining anything.
"""

import asyncio
import json
import logging
from importlib import import_module
from types import SimpleNamespace

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.http import parse_cookie

from shop.models import Cart
from shop.receivers import SESSION_CART_KEY

from . import live, services
from .consumers import CLOSE_FLOODING, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHENTICATED, TokenBucket

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_NO_CART = 4404
MAX_FRAME_CHARS = 256  # A ping is 15 characters.


class LiveSignalConsumer(AsyncJsonWebsocketConsumer):
    """A socket that joins a fixed set of groups at the handshake and then only listens."""

    rate_per_second = 2
    burst = 10
    max_refusals = 50
    closing = False
    layer_failed = False
    subscriptions: list[str] = []

    async def dispatch(self, message):
        # Every database call of these sockets goes through database_sync_to_async, which closes
        # stale connections itself: skip the thread hop Channels makes before each message for
        # that, or a fan-out to a thousand carts costs a thousand hops.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    @property
    def channel_receive(self):
        return self._guarded_channel_receive

    @channel_receive.setter
    def channel_receive(self, receive):
        # As in NotificationConsumer: a failing layer (Redis gone past its retries) becomes one
        # event that closes with 1013, not a 1011 and a traceback per socket.
        async def guarded_receive():
            if self.layer_failed:
                await asyncio.Event().wait()  # Reported once; wait to be cancelled at close.
            try:
                return await receive()
            except Exception as error:
                self.layer_failed = True
                return {"type": "layer.lost", "error": f"{type(error).__name__}: {error}"[:200]}

        self._guarded_channel_receive = guarded_receive

    async def layer_lost(self, event):
        if not self.closing:
            logger.warning(
                "A %s socket closed with 1013: the channel layer failed (%s)", type(self).__name__, event["error"]
            )
        await self._close(CLOSE_TRY_AGAIN_LATER)

    # Handshake and groups -----------------------------------------------------------------

    async def open(self, subscriptions: list[str], hello: dict) -> None:
        """Join `subscriptions`, accept and say `hello`; close with 1013 if the layer fails."""
        self.subscriptions = subscriptions
        self.rate_limit = TokenBucket(rate=self.rate_per_second, burst=self.burst)
        self.refusals = 0
        if not await self._join_groups():
            await self.accept()  # Accept first so the browser sees the code, not a 1006.
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        await self.accept()
        await self.send_json(hello)

    async def refuse(self, code: int) -> None:
        """Accept (so the browser sees the code and stops retrying) and close, joining nothing."""
        await self.accept()
        await self._close(code)

    async def disconnect(self, code):
        try:
            await asyncio.wait_for(self._leave_groups(), timeout=settings.NOTIFICATIONS_SUBSCRIBE_TIMEOUT)
        except Exception:
            pass  # The layer is down or frozen: the membership expires by itself (group_expiry).

    async def _join_groups(self) -> bool:
        try:
            await asyncio.wait_for(self._group_add_all(), timeout=settings.NOTIFICATIONS_SUBSCRIBE_TIMEOUT)
            return True
        except Exception as error:
            logger.warning("A %s socket cannot join its groups (%r); closed with 1013", type(self).__name__, error)
            return False

    async def _group_add_all(self):
        for group in self.subscriptions:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave_groups(self):
        for group in self.subscriptions:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _close(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        await self.close(code=code)

    # Client frames ------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closing or not self.subscriptions:
            return
        if not self.rate_limit.take():
            self.refusals += 1
            if self.refusals > self.max_refusals:
                await self._close(CLOSE_FLOODING)
            else:
                await self._error("rate_limited", "Too many messages; slow down.")
            return
        if text_data is None or len(text_data) > MAX_FRAME_CHARS:
            await self._error("bad_frame", 'This socket only takes {"type": "ping"}.')
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self._error("bad_json", "The message is not valid JSON.")
            return
        if not isinstance(content, dict) or content.get("type") != "ping":
            await self._error("unknown_type", 'This socket only takes {"type": "ping"}.')
            return
        if not await self.still_allowed():
            await self._close(self.close_code_when_refused)
            return
        if not await self._join_groups():  # Memberships expire (group_expiry): each ping renews them.
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        await self.send_json({"type": "pong"})

    close_code_when_refused = CLOSE_UNAUTHENTICATED

    async def still_allowed(self) -> bool:
        return True

    async def _error(self, code: str, detail: str):
        await self.send_json({"type": "error", "code": code, "detail": detail})

    # Channel-layer events -----------------------------------------------------------------

    async def session_logout(self, event):
        await self._close(CLOSE_UNAUTHENTICATED)

    # Who is on the other end --------------------------------------------------------------

    def identity(self) -> tuple[int | None, str | None]:
        """(signed-in user id or None, session key or None) of this socket, from server data only.

        Read from whichever authentication middleware the ASGI app runs (the project's
        SocketSessionMiddleware puts `user_id` and `session_key` in the scope, Channels'
        AuthMiddlewareStack `user` and `session`); an anonymous session's key, which the
        former leaves out, comes from the session cookie itself, as a request's would.
        """
        if "user_id" in self.scope:
            user_id, session_key = self.scope["user_id"], self.scope.get("session_key")
        else:
            user, session = self.scope.get("user"), self.scope.get("session")
            user_id = user.pk if user is not None and user.is_authenticated else None
            session_key = session.session_key if session is not None else None
        if session_key is None:
            for name, value in self.scope.get("headers", ()):
                if name == b"cookie":
                    session_key = parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME) or None
                    break
        return user_id, session_key


def load_session(session_key: str) -> dict:
    """A session's data, read fresh from the store ({} if it does not exist or has expired)."""
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key).load()


def session_user(session_key: str):
    """The user a session is signed in as now, checked as a request would be, or an anonymous user.

    Read-only: on a stale password hash Django's get_user() flushes the session, which is for a
    request to do (it can send the browser a new cookie); a socket only needs the answer.
    """
    return auth.get_user(SimpleNamespace(session=_ReadOnlySession(load_session(session_key))))


class _ReadOnlySession(dict):
    def flush(self):
        pass

    def cycle_key(self):
        pass


class CartConsumer(LiveSignalConsumer):
    """/ws/cart/: the lines of this session's cart whose state a stock change touched.

    Frames: `hello` with every line's state, then `lines` with the lines a change touched.
    """

    async def connect(self):
        cart_id, session_key, signed_in = await self._identify()
        if cart_id is None:
            await self.refuse(CLOSE_NO_CART)  # No cart yet: a page with a cart opens a new socket.
            return
        self.cart_id, self.session_key, self.signed_in_as = cart_id, session_key, signed_in
        subscriptions = [live.cart_group(cart_id)]
        if session_key and signed_in:
            subscriptions.append(services.session_group(session_key))  # Logging out closes it.
        lines = await database_sync_to_async(live.cart_line_frames)(cart_id)
        await self.open(subscriptions, {"type": "hello", "lines": lines})

    @database_sync_to_async
    def _identify(self) -> tuple[int | None, str | None, int | None]:
        """The cart this socket may follow: the user's, or the anonymous session's (server data only)."""
        user_id, session_key = self.identity()
        if user_id is not None:
            return Cart.objects.filter(user_id=user_id).values_list("pk", flat=True).first(), session_key, user_id
        cart_id = load_session(session_key).get(SESSION_CART_KEY) if session_key else None
        if not isinstance(cart_id, int) or isinstance(cart_id, bool):
            return None, session_key, None
        found = Cart.objects.filter(pk=cart_id, user__isnull=True).values_list("pk", flat=True).first()
        return found, session_key, None

    @database_sync_to_async
    def still_allowed(self) -> bool:
        if self.signed_in_as is None or not self.session_key:
            return True  # An anonymous cart: the session cookie that opened it is the only key.
        user = session_user(self.session_key)
        return user.is_authenticated and user.pk == self.signed_in_as

    async def cart_lines(self, event):
        await self.send_json({"type": "lines", "lines": event["lines"]})


class StaffConsumer(LiveSignalConsumer):
    """/ws/staff/: new paid orders and payments needing attention, for staff only.

    Frames: `hello`, then one frame per event (`order_paid`, `payment_attention`).
    """

    close_code_when_refused = CLOSE_FORBIDDEN

    async def connect(self):
        if not await self._is_staff():
            await self.refuse(CLOSE_FORBIDDEN)
            return
        # The user's group carries "your row changed: check again" (a demotion closes the socket
        # at once) besides their notifications, which this socket ignores.
        subscriptions = [live.STAFF_GROUP, services.user_group(self.user_id)]
        if self.session_key:
            subscriptions.append(services.session_group(self.session_key))
        await self.open(subscriptions, {"type": "hello"})

    @database_sync_to_async
    def _is_staff(self) -> bool:
        """Whether the handshake's session is a staff member's (read from the database, not the scope)."""
        self.user_id, self.session_key = self.identity()
        if self.user_id is None:
            return False
        return get_user_model().objects.filter(pk=self.user_id, is_active=True, is_staff=True).exists()

    @database_sync_to_async
    def still_allowed(self) -> bool:
        if not self.session_key:
            return get_user_model().objects.filter(pk=self.user_id, is_active=True, is_staff=True).exists()
        user = session_user(self.session_key)
        return user.is_authenticated and user.pk == self.user_id and user.is_staff

    async def staff_event(self, event):
        await self.send_json(event["event"])

    async def session_recheck(self, event):
        if not await self.still_allowed():
            await self._close(CLOSE_FORBIDDEN)

    async def notification_message(self, event):
        pass  # The notifications socket shows these.

    async def unread_count(self, event):
        pass

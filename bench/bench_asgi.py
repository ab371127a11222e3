"""The shop's ASGI application with the benchmark's probes: what `daphne bench.bench_asgi:application` serves.

Bench only, never deployed. Environment:

- BENCH_APP=shop (default) serves shop.asgi unchanged apart from the probes below;
  BENCH_APP=bare serves a bare Channels consumer at /ws/notifications/ (accept, one frame,
  no session, no user, no group): the floor a socket costs daphne and Channels themselves.
- BENCH_COMMIT_LOG=<file>: every notification's commit time (time.time(), taken in the
  on-commit callback that hands the push over) is appended as "<id> <time>", so the bench can
  compare it with the frame's arrival in the client process on the same clock.
- BENCH_NOTIFY_MODE: "on" (default) the app as it is; "off" no notification and no email
  (the receivers are disconnected); "slow" the channel layer's group_send and the email's
  sending each take 1 s more (BENCH_SLOW_S); "sync" the same slow path, awaited inside the
  request as a synchronous design would: the push and the email are sent on commit, in the
  request's thread, before the response.
"""

import asyncio
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from django.db import transaction  # noqa: E402

from shop.asgi import application as shop_application  # noqa: E402 - sets Django up first

SLOW_S = float(os.environ.get("BENCH_SLOW_S", "1.0"))
MODE = os.environ.get("BENCH_NOTIFY_MODE", "on")
APP = os.environ.get("BENCH_APP", "shop")


def _install_commit_log(path: str) -> None:
    from notifications import services

    log = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    after_commit = services.dispatch

    def traced_dispatch(notification, *args, **kwargs):
        log.write(f"{notification.pk} {time.time():.6f}\n")
        return after_commit(notification, *args, **kwargs)

    services.dispatch = traced_dispatch


def _slow_layer() -> None:
    from channels.layers import channel_layers

    layer = channel_layers["default"]
    group_send = layer.group_send

    async def slow_group_send(group, message):
        await asyncio.sleep(SLOW_S)
        await group_send(group, message)

    layer.group_send = slow_group_send


def _notifications_off() -> None:
    from shop.signals import order_placed, order_status_changed

    order_placed.disconnect(dispatch_uid="notifications.order_placed")
    order_status_changed.disconnect(dispatch_uid="notifications.order_status")


def _synchronous_notifications() -> None:
    """Send the push and the email in the request, after commit, and wait for both."""
    from asgiref.sync import async_to_sync
    from django.core.mail import get_connection

    from notifications import services, tasks
    from shop.models import Order

    def push_now(notification, *args, **kwargs):
        async_to_sync(services.adispatch)(notification, *args, **kwargs)

    def email_now(*, order_id: int) -> None:
        def send():
            order = Order.objects.select_related("user").get(pk=order_id)
            message = tasks.build_order_confirmation(order)
            message.connection = get_connection("bench.slow_email.SlowEmailBackend")
            message.send()

        transaction.on_commit(send)

    services.dispatch = push_now
    services.queue_order_confirmation = email_now


def _bare_application():
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class BareConsumer(AsyncWebsocketConsumer):
        async def connect(self):
            await self.accept()
            await self.send(text_data='{"type": "hello"}')

    return ProtocolTypeRouter(
        {
            "http": shop_application,
            "websocket": URLRouter([path("ws/notifications/", BareConsumer.as_asgi())]),
        }
    )


if MODE == "off":
    _notifications_off()
elif MODE in {"slow", "sync"}:
    _slow_layer()
    if MODE == "sync":
        _synchronous_notifications()
if os.environ.get("BENCH_COMMIT_LOG"):
    _install_commit_log(os.environ["BENCH_COMMIT_LOG"])

application = _bare_application() if APP == "bare" else shop_application

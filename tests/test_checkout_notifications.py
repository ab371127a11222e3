"""Checkout never depends on the push or the email: whatever breaks, the shopper gets the order
page, the notification row is kept, and the next socket connect delivers it.

The breakage is faked where it lives, outside the project: the channel layer (a Redis that is
down or stalls) and the email backend (an SMTP server that hangs up).
"""

import asyncio
import logging
from datetime import date
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.test import Client

from notifications.models import Notification
from shop.asgi import application
from shop.models import Order
from tests.checkout_data import shipping_fields
from tests.fakes import BrokenLayer, HangingLayer, use_layer, wait_until
from tests.worker import run_worker

pytestmark = pytest.mark.django_db(transaction=True)

EXPIRY = f"12/{(date.today().year + 2) % 100:02d}"


class GatedLayer(InMemoryChannelLayer):
    """Pushes wait until the test opens the gate, and are recorded once through."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.pushed: list[str] = []

    async def group_send(self, group, message):
        await self.gate.wait()
        await super().group_send(group, message)
        self.pushed.append(group)


@pytest.fixture(autouse=True)
def fresh_layer(settings):
    """A fresh layer per test (tests that break it choose another class)."""
    use_layer(settings, InMemoryChannelLayer)


@pytest.fixture
def alice(shopper, make_product) -> Client:
    """A signed-in shopper with a kettle in her cart."""
    client = Client()
    client.force_login(shopper)
    response = client.post("/cart/add/", {"product": make_product(name="Kettle").pk, "quantity": 1})
    assert response.status_code == 302
    return client


def pay_with_approved_card(client: Client):
    token = client.get("/checkout/").context["checkout_token"]
    return client.post(
        "/checkout/",
        {**shipping_fields(), "number": "4242 4242 4242 4242", "expiry": EXPIRY, "cvc": "123", "checkout_token": token},
    )


def frames_on_next_connect(client: Client, *, after: int = 0) -> list[dict]:
    """Open the socket as the page would after a reconnect, and return what it replays."""

    async def connect():
        communicator = WebsocketCommunicator(
            application,
            f"/ws/notifications/?after={after}",
            headers=[
                (b"origin", b"http://127.0.0.1"),
                (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
            ],
        )
        try:
            connected, _ = await communicator.connect()
            assert connected
            frames = [await communicator.receive_json_from()]
            while not await communicator.receive_nothing(timeout=0.1):
                frames.append(await communicator.receive_json_from())
            return frames
        finally:
            await communicator.disconnect()

    return async_to_sync(connect)()


def assert_paid_and_replayed(response, shopper, client):
    order = Order.objects.get(user=shopper)
    assert order.status == Order.Status.PAID
    assert response.status_code == 302
    assert response.url == f"/orders/{order.number}/"
    notification = Notification.objects.get(recipient=shopper, kind="order_placed")
    assert order.number in notification.title

    hello, *replayed = frames_on_next_connect(client)
    assert hello == {"type": "hello", "unread": 1, "last_id": notification.pk, "last_seq": notification.seq}
    assert [(frame["type"], frame["id"], frame["title"]) for frame in replayed] == [
        ("notification", notification.pk, notification.title)
    ]


def test_checkout_succeeds_when_the_channel_layer_is_down(alice, shopper, settings, caplog):
    use_layer(settings, BrokenLayer)

    response = pay_with_approved_card(alice)

    assert_paid_and_replayed(response, shopper, alice)
    assert any(
        record.levelno == logging.WARNING and "ConnectionError" in record.getMessage()
        for record in caplog.records
        if record.name == "notifications.services"
    )


def test_checkout_succeeds_when_the_channel_layer_hangs(alice, shopper, settings, caplog):
    use_layer(settings, HangingLayer)
    settings.NOTIFICATIONS_DISPATCH_TIMEOUT = 0.2

    response = pay_with_approved_card(alice)

    assert_paid_and_replayed(response, shopper, alice)
    assert any(
        record.levelno == logging.WARNING and "timed out" in record.getMessage()
        for record in caplog.records
        if record.name == "notifications.services"
    )


def test_checkout_succeeds_when_the_email_backend_fails(alice, shopper, settings, caplog, mailoutbox):
    settings.EMAIL_BACKEND = "tests.fakes.BrokenEmailBackend"

    response = pay_with_approved_card(alice)
    run_worker()  # the task worker tries the email, off the request path

    assert_paid_and_replayed(response, shopper, alice)
    assert mailoutbox == []
    assert any("Could not send the confirmation email" in record.getMessage() for record in caplog.records)


def test_checkout_with_everything_working_pushes_and_emails(alice, shopper, mailoutbox):
    response = pay_with_approved_card(alice)
    run_worker()

    assert_paid_and_replayed(response, shopper, alice)
    [email] = mailoutbox
    assert email.to == [shopper.email]


async def test_checkout_through_the_asgi_app_answers_before_the_push_is_delivered(
    alice, shopper, settings, close_worker_thread_connections
):
    """Under the server, the response does not wait for the push: it is still held at the gate."""
    use_layer(settings, GatedLayer)
    token = (await sync_to_async(alice.get)("/checkout/")).context["checkout_token"]
    csrf = alice.cookies["csrftoken"].value
    post = HttpCommunicator(
        application,
        "POST",
        "/checkout/",
        body=urlencode(
            {
                **shipping_fields(),
                "number": "4242424242424242",
                "expiry": EXPIRY,
                "cvc": "123",
                "checkout_token": token,
                "csrfmiddlewaretoken": csrf,
            }
        ).encode(),
        headers=[
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"cookie", f"sessionid={alice.cookies['sessionid'].value}; csrftoken={csrf}".encode()),
        ],
    )

    response = await post.get_response(timeout=10)

    order = await Order.objects.aget(user=shopper)
    assert response["status"] == 302
    assert dict(response["headers"])[b"Location"] == f"/orders/{order.number}/".encode()
    layer = get_channel_layer()
    assert layer.pushed == []  # the order page went out while the push was still waiting
    layer.gate.set()
    # Staff's live feed (live.staff) is pushed too; the shopper's own push is the one counted.
    await wait_until(lambda: f"notifications.user.{shopper.pk}" in layer.pushed, timeout=5)
    assert [group for group in layer.pushed if group.startswith("notifications.")] == [
        f"notifications.user.{shopper.pk}"
    ]

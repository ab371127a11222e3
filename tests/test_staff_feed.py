"""The staff feed (issue 10): /ws/staff/ toasts new paid orders and payments needing attention, to staff only."""

import secrets
from datetime import date

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from notifications import live
from shop import services
from shop.asgi import application
from shop.models import Order
from shop.payments import Card
from tests.test_live_cart import hold

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer"),
]

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
async def open_socket():
    opened = []

    async def open_(path: str, user=None):
        headers = [(b"origin", b"http://127.0.0.1")]
        if user is not None:
            headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        opened.append(communicator)
        communicator.connected, _ = await communicator.connect()
        return communicator

    yield open_
    for communicator in opened:
        await communicator.disconnect()


async def staff_socket(open_socket, staff):
    socket = await open_socket("/ws/staff/", staff)
    assert await socket.receive_json_from() == {"type": "hello"}
    return socket


async def test_a_socket_that_is_not_staffs_is_closed_with_4403_before_joining_anything(open_socket, shopper):
    for user in (None, shopper):
        socket = await open_socket("/ws/staff/", user)

        assert socket.connected
        assert await socket.receive_output() == {"type": "websocket.close", "code": 4403}
    assert get_channel_layer().groups == {}


async def test_only_staff_sockets_join_the_staff_group(open_socket, staff, shopper):
    await staff_socket(open_socket, staff)
    customer = await open_socket("/ws/notifications/", shopper)
    assert (await customer.receive_json_from())["type"] == "hello"

    members = get_channel_layer().groups[live.STAFF_GROUP]
    assert len(members) == 1


async def test_a_paid_order_is_toasted_to_staff_and_never_to_a_customer(open_socket, staff, shopper, make_product):
    kettle = await sync_to_async(make_product)(name="Kettle", price="30.00", stock=5)
    await sync_to_async(hold)(shopper, kettle, 2)
    feed = await staff_socket(open_socket, staff)
    customer = await open_socket("/ws/notifications/", shopper)
    await customer.receive_json_from()

    order = await services.place_order(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    event = await feed.receive_json_from(timeout=3)
    assert event["type"] == "order_paid"
    assert (event["number"], event["amount"], event["customer"]) == (order.number, "€60.00", "alice")
    assert event["title"] == f"New order {order.number}: €60.00"
    assert event["url"] == f"/admin/shop/order/{order.pk}/change/"
    assert await feed.receive_nothing(timeout=0.3)  # Once.
    frames = []
    while not await customer.receive_nothing(timeout=0.3):
        frames.append(await customer.receive_json_from())
    assert {frame["type"] for frame in frames} <= {"notification", "unread"}
    assert "order_paid" not in str(frames)


async def test_a_payment_left_pending_past_the_timeout_is_toasted_to_staff(
    open_socket, staff, shopper, make_product, settings
):
    settings.PAYMENT_TIMEOUT = 0.2
    settings.SANDBOX_BANK_LATENCY_MS = 1000
    kettle = await sync_to_async(make_product)(name="Kettle", stock=5)
    await sync_to_async(hold)(shopper, kettle, 1)
    feed = await staff_socket(open_socket, staff)

    order = await services.place_order(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    assert order.status == Order.Status.PENDING
    event = await feed.receive_json_from(timeout=3)
    assert (event["type"], event["reason"], event["number"]) == ("payment_attention", "overdue", order.number)
    assert event["customer"] == "alice"


async def test_a_payment_released_by_reconciliation_is_toasted_to_staff(
    open_socket, staff, shopper, make_product, settings
):
    kettle = await sync_to_async(make_product)(name="Kettle", stock=5)
    await sync_to_async(hold)(shopper, kettle, 1)
    # A checkout that never reached the bank: reconciliation finds no charge and releases it.
    order = await sync_to_async(services.reserve_order)(user=shopper, checkout_token=secrets.token_urlsafe(24))
    feed = await staff_socket(open_socket, staff)

    report = await services.areconcile_payments(older_than=0)

    assert report.released == 1
    event = await feed.receive_json_from(timeout=3)
    assert (event["type"], event["reason"], event["number"]) == ("payment_attention", "released", order.number)


async def test_a_staff_member_no_longer_staff_is_closed_at_once(open_socket, staff):
    feed = await staff_socket(open_socket, staff)

    staff.is_staff = False
    await sync_to_async(staff.save)()

    assert await feed.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}


async def test_staff_socket_answers_ping_and_refuses_anything_else(open_socket, staff):
    feed = await staff_socket(open_socket, staff)

    await feed.send_json_to({"type": "ping"})
    assert await feed.receive_json_from() == {"type": "pong"}
    await feed.send_to(text_data="not json")
    assert (await feed.receive_json_from())["code"] == "bad_json"


def test_staff_pages_load_the_staff_feed_and_shoppers_pages_do_not(staff, shopper):
    staff_client, shopper_client = Client(), Client()
    staff_client.force_login(staff)
    shopper_client.force_login(shopper)

    admin_page = staff_client.get("/admin/shop/order/").content.decode()
    shop_page = staff_client.get("/").content.decode()
    shopper_page = shopper_client.get("/").content.decode()

    for page in (admin_page, shop_page):
        assert 'id="staff-feed-config"' in page and "notifications/staff_feed.js" in page
    assert "staff-feed-config" not in shopper_page and "staff_feed.js" not in shopper_page
    assert '"order_list_path": "/admin/shop/order/"' in admin_page

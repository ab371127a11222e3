"""Delivery receipts (issue 10): an order's notifications, created, pushed, delivered and read, in the admin."""

import asyncio
import secrets

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from notifications import receipts
from notifications.models import Notification
from shop import services
from shop.asgi import application
from shop.models import Order
from tests.fakes import SpyLayer, use_layer
from tests.test_live_cart import CARD, hold


def paid_order(user, product) -> Order:
    hold(user, product, 1)
    return async_to_sync(services.place_order)(user=user, checkout_token=secrets.token_urlsafe(24), card=CARD)


def admin_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def test_order_notifications_are_linked_to_their_order(shopper, staff, make_product):
    order = paid_order(shopper, make_product(name="Kettle"))
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)

    kinds = sorted(order.notifications.values_list("kind", flat=True))

    assert kinds == ["order_placed", "order_shipped"]


def test_write_pushed_records_each_notifications_own_time_in_one_update(shopper, django_assert_num_queries):
    first = Notification.objects.create(recipient=shopper, kind="order_shipped", title="1")
    second = Notification.objects.create(recipient=shopper, kind="order_shipped", title="2")
    at = timezone.now()

    with django_assert_num_queries(1):
        receipts.write_pushed({first.pk: at, second.pk: at - timezone.timedelta(seconds=5)})

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.pushed_at, second.pushed_at) == (at, at - timezone.timedelta(seconds=5))


def test_pushes_made_together_are_recorded_with_their_one_time_not_a_branch_each(shopper):
    """A bulk's round of pushes shares one time (issue 8): its receipts are one plain UPDATE.

    Before: a CASE branch per notification, 500 a batch, built in Python on the server's thread
    while it was delivering the bulk.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ids = [Notification.objects.create(recipient=shopper, kind="order_shipped", title=str(n)).pk for n in range(50)]
    at = timezone.now()

    with CaptureQueriesContext(connection) as queries:
        assert receipts.write_pushed(dict.fromkeys(ids, at)) == 50

    [update] = queries
    assert "CASE" not in update["sql"]
    assert set(Notification.objects.values_list("pushed_at", flat=True)) == {at}


@pytest.mark.django_db(transaction=True)
async def test_a_push_made_by_the_server_records_pushed_then_the_ack_delivered_and_the_read(
    shopper, staff, make_product, in_memory_layer, close_worker_thread_connections
):
    order = await sync_to_async(paid_order)(shopper, await sync_to_async(make_product)(name="Kettle"))
    client = Client()
    await sync_to_async(client.force_login)(shopper)
    socket = WebsocketCommunicator(
        application,
        "/ws/notifications/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ],
    )
    assert (await socket.connect())[0]
    await socket.receive_json_from()  # hello; the application now runs on this test's loop, as under daphne.

    await sync_to_async(services.change_order_status)(order=order, status=Order.Status.SHIPPED, actor=staff)
    frame = await socket.receive_json_from(timeout=3)
    shipped = await until_set(frame["id"], "pushed_at")
    await socket.send_json_to({"type": "ack", "id": shipped.pk})
    await until_set(shipped.pk, "delivered_at")
    await socket.send_json_to({"type": "read", "id": shipped.pk})
    shipped = await until_set(shipped.pk, "read_at")
    await socket.disconnect()

    assert shipped.order_id == order.pk
    assert shipped.created_at <= shipped.pushed_at <= shipped.delivered_at <= shipped.read_at


@pytest.mark.django_db(transaction=True)
async def test_push_receipts_are_written_shortly_after_the_pushes_in_one_batch(
    shopper, close_worker_thread_connections, monkeypatch
):
    """The writer's thread would take the GIL while the push's frame is still on its way (issue 8):
    it waits WRITE_DELAY_S, gathering the receipts of pushes made meanwhile, and records each
    push's own time."""
    writes = []
    write_pushed = receipts.write_pushed

    def spy(pushed):
        writes.append(set(pushed))
        return write_pushed(pushed)

    monkeypatch.setattr(receipts, "write_pushed", spy)
    first = await Notification.objects.acreate(recipient=shopper, kind="order_shipped", title="1")
    second = await Notification.objects.acreate(recipient=shopper, kind="order_shipped", title="2")
    loop = asyncio.get_running_loop()

    before = timezone.now()
    await receipts.anote_pushed(first.pk, server_loop=loop)
    await asyncio.sleep(0.1)
    assert await Notification.objects.filter(pushed_at__isnull=False).acount() == 0, "written during the push"
    await receipts.anote_pushed(second.pk, server_loop=loop)
    first_row, second_row = await until_set(first.pk, "pushed_at"), await until_set(second.pk, "pushed_at")

    assert writes == [{first.pk, second.pk}], "one write for both pushes"
    assert before <= first_row.pushed_at < second_row.pushed_at
    assert receipts.WRITE_DELAY_S <= 1, "a receipt is for the admin to read soon after"


async def until_set(notification_id: int, field: str) -> Notification:
    """Read the row until `field` is set (3 s at most)."""

    async def poll() -> Notification:
        while True:
            row = await Notification.objects.aget(pk=notification_id)
            if getattr(row, field) is not None:
                return row
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout=3)


def test_the_order_page_shows_each_notifications_receipts(shopper, staff, make_product):
    order = paid_order(shopper, make_product(name="Kettle"))
    placed = order.notifications.get()
    Notification.objects.filter(pk=placed.pk).update(pushed_at=timezone.now(), delivered_at=timezone.now())

    page = admin_client(staff).get(f"/admin/shop/order/{order.pk}/change/").content.decode()

    assert "delivery receipts" in page.lower()
    for column in ("Created at", "Pushed at", "Delivered at", "Read at"):
        assert column in page
    assert placed.title in page


def test_orders_whose_notification_was_never_delivered_can_be_filtered(shopper, staff, make_product):
    delivered = paid_order(shopper, make_product(name="Kettle"))
    Notification.objects.filter(order=delivered).update(delivered_at=timezone.now())
    undelivered = paid_order(shopper, make_product(name="Teapot"))

    never = admin_client(staff).get("/admin/shop/order/", {"notification_delivery": "never"}).content.decode()
    everything = admin_client(staff).get("/admin/shop/order/", {"notification_delivery": "delivered"}).content.decode()

    assert undelivered.number in never and delivered.number not in never
    assert delivered.number in everything and undelivered.number not in everything


def test_staff_can_resend_an_orders_undelivered_notifications(shopper, staff, make_product, settings):
    order = paid_order(shopper, make_product(name="Kettle"))
    spy = use_layer(settings, SpyLayer)

    response = admin_client(staff).post(
        "/admin/shop/order/", {"action": "resend_undelivered", "_selected_action": [order.pk]}, follow=True
    )

    assert "1 notification(s) pushed again" in response.content.decode()
    [(group, message)] = spy.group_sends
    assert group == f"notifications.user.{shopper.pk}"
    assert message["notification"]["id"] == order.notifications.get().pk

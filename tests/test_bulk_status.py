"""Admin bulk actions over thousands of orders: one transaction, notifications written and pushed together (issue 8).

Before: the action moved one order per transaction (about a dozen statements each), so 5000
orders took 98 s and the shoppers heard over those 98 s, one commit at a time.
"""

import secrets
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tasks_db.models import DBTaskResult

import notifications.services
from notifications import escalation
from notifications.models import Notification, NotificationStream
from shop import services
from shop.models import Order, OrderEvent
from tests.test_consumers import open_socket  # noqa: F401 - a fixture, used by name


def paid_orders(users, per_user: int) -> list[Order]:
    return Order.objects.bulk_create(
        Order(user=user, status=Order.Status.PAID, total=Decimal("9.50"), checkout_token=secrets.token_urlsafe(24))
        for user in users
        for _ in range(per_user)
    )


def ship_from_the_admin(client: Client, orders: list[Order]):
    return client.post(
        "/admin/shop/order/", {"action": "mark_shipped", "_selected_action": [order.pk for order in orders]}
    )


@pytest.fixture
def staff_client(staff):
    client = Client()
    client.force_login(staff)
    return client


def test_shipping_many_orders_takes_no_more_statements_than_shipping_a_few(staff_client, make_user):
    few = paid_orders([make_user() for _ in range(2)], per_user=2)
    many = paid_orders([make_user() for _ in range(10)], per_user=4)

    with CaptureQueriesContext(connection) as shipping_few:
        assert ship_from_the_admin(staff_client, few).status_code == 302
    with CaptureQueriesContext(connection) as shipping_many:
        assert ship_from_the_admin(staff_client, many).status_code == 302

    assert set(Order.objects.values_list("status", flat=True)) == {Order.Status.SHIPPED}
    assert OrderEvent.objects.filter(to_status=Order.Status.SHIPPED).count() == 44
    # Ten times the orders, the same statements (the old code ran about a dozen more per order).
    assert len(shipping_many) <= len(shipping_few) + 2, [query["sql"][:80] for query in shipping_many]


def test_a_bulk_move_numbers_each_shoppers_notifications_in_order_after_earlier_ones(make_user, staff):
    alice, bob = make_user(), make_user()
    notifications.services.notify(recipient=alice, kind=Notification.Kind.ORDER_PLACED, title="Earlier")
    orders = paid_orders([alice, bob], per_user=3)

    result = services.change_orders_status(
        order_ids=[order.pk for order in orders], status=Order.Status.SHIPPED, actor=staff
    )

    assert len(result.changed) == 6 and result.problems == []
    shipped = Notification.objects.filter(kind=Notification.Kind.ORDER_SHIPPED).order_by("pk")
    assert [(n.recipient_id, n.seq) for n in shipped if n.recipient_id == alice.pk] == [
        (alice.pk, s) for s in (2, 3, 4)
    ]
    assert [n.seq for n in shipped if n.recipient_id == bob.pk] == [1, 2, 3]
    assert NotificationStream.objects.get(pk=alice.pk).last_seq == 4
    assert {n.order_id for n in shipped} == {order.pk for order in orders}
    assert all(n.title == f"Order {n.order.number} has shipped" for n in shipped)


def test_a_bulk_move_leaves_orders_it_cannot_move_and_says_why(make_user, staff):
    shopper = make_user()
    [paid, delivered] = paid_orders([shopper], per_user=2)
    Order.objects.filter(pk=delivered.pk).update(status=Order.Status.DELIVERED)

    result = services.change_orders_status(order_ids=[paid.pk, delivered.pk], status=Order.Status.SHIPPED, actor=staff)

    assert [order.pk for order in result.changed] == [paid.pk]
    assert result.problems == [f"Order {delivered.number} is delivered and cannot be marked shipped."]
    assert Order.objects.get(pk=delivered.pk).status == Order.Status.DELIVERED
    assert Notification.objects.filter(recipient=shopper).count() == 1


def test_a_bulk_move_that_returns_money_goes_through_the_bank_order_by_order(make_user, staff, bank):
    shopper = make_user()
    [first, second] = paid_orders([shopper], per_user=2)
    Order.objects.filter(pk=second.pk).update(status=Order.Status.SHIPPED)

    result = services.change_orders_status(order_ids=[first.pk, second.pk], status=Order.Status.REFUNDED, actor=staff)

    # No captured charge here (the orders were written directly): the refund step finds none
    # and the move still goes through change_order_status(), one order a transaction.
    assert sorted(order.pk for order in result.changed) == [first.pk, second.pk]
    assert set(Order.objects.values_list("status", flat=True)) == {Order.Status.REFUNDED}
    assert Notification.objects.filter(kind=Notification.Kind.ORDER_REFUNDED).count() == 2


def test_a_bulk_of_unread_emails_is_one_task_that_emails_each_still_unread(make_user, staff, mailoutbox):
    alice, bob = make_user(), make_user()
    orders = paid_orders([alice, bob], per_user=2)

    services.change_orders_status(order_ids=[order.pk for order in orders], status=Order.Status.SHIPPED, actor=staff)

    [task] = DBTaskResult.objects.filter(task_path=escalation.send_unread_emails.module_path)
    assert not DBTaskResult.objects.filter(task_path=escalation.send_unread_email.module_path).exists()
    read = Notification.objects.filter(recipient=bob).first()
    Notification.objects.filter(pk=read.pk).update(read_at=read.created_at)

    outcome = escalation.send_unread_emails.call(**task.args_kwargs["kwargs"])

    assert outcome == {"sent": 3, "of": 4}
    assert sorted(message.to[0] for message in mailoutbox) == sorted([alice.email, alice.email, bob.email])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_a_bulk_move_pushes_each_shoppers_frames_in_sequence_with_their_counts(
    open_socket,  # noqa: F811
    make_user,
    staff,
):
    alice, bob = await sync_to_async(make_user)(), await sync_to_async(make_user)()
    orders = await sync_to_async(paid_orders)([alice, bob], per_user=3)
    sockets = {}
    for user in (alice, bob):
        client = Client()
        await sync_to_async(client.force_login)(user)
        sockets[user.pk] = await open_socket(client)

    await sync_to_async(services.change_orders_status)(
        order_ids=[order.pk for order in orders], status=Order.Status.SHIPPED, actor=staff
    )

    for socket in sockets.values():
        frames = [await socket.receive_json_from(timeout=2) for _ in range(6)]
        assert [frame["seq"] for frame in frames if frame["type"] == "notification"] == [1, 2, 3]
        assert [frame["count"] for frame in frames if frame["type"] == "unread"] == [1, 2, 3]
        assert await socket.receive_nothing(timeout=0.1)

"""Back in stock (issue 10): ask on a sold-out product, hear once when a restock brings it back."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client

from notifications import alerts
from notifications.models import Notification, StockAlert
from shop import services
from shop.asgi import application
from tests.test_live_cart import buy, hold


class Rollback(Exception):
    pass


def signed_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def back_in_stock(user):
    return list(Notification.objects.filter(recipient=user, kind=Notification.Kind.BACK_IN_STOCK))


# Asking -----------------------------------------------------------------------------------------


def test_asking_on_a_sold_out_product_records_one_request_however_often(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=0)
    client = signed_in(shopper)

    for _ in range(2):
        response = client.post("/notifications/stock-alerts/", {"product": grinder.pk, "next": "/products/x/"})
        assert response.status_code == 302

    assert StockAlert.objects.filter(user=shopper, product=grinder).count() == 1


def test_asking_about_a_product_in_stock_is_refused_with_a_message(make_product, shopper):
    kettle = make_product(name="Kettle", stock=3)

    response = signed_in(shopper).post("/notifications/stock-alerts/", {"product": kettle.pk}, follow=True)

    assert not StockAlert.objects.exists()
    assert "Kettle is in stock: you can add it to your cart now." in response.content.decode()


def test_asking_needs_a_sign_in_and_a_csrf_token(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=0)

    anonymous = Client().post("/notifications/stock-alerts/", {"product": grinder.pk})
    without_token = signed_in(shopper, enforce_csrf_checks=True).post(
        "/notifications/stock-alerts/", {"product": grinder.pk}
    )

    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert without_token.status_code == 403
    assert not StockAlert.objects.exists()


def test_product_page_shows_the_request_state(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=0)
    client = signed_in(shopper)
    url = grinder.get_absolute_url()

    before = client.get(url).content.decode()
    client.post("/notifications/stock-alerts/", {"product": grinder.pk})
    after = client.get(url).content.decode()
    signed_out = Client().get(url).content.decode()

    assert 'data-stock-alert="available"' in before and "Tell me when it is back" in before
    assert 'data-stock-alert="requested"' in after and "We will tell you when Burr Grinder is back" in after
    assert 'data-stock-alert="signed-out"' in signed_out and "Log in" in signed_out


def test_a_shopper_can_stop_waiting(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=0)
    client = signed_in(shopper)
    client.post("/notifications/stock-alerts/", {"product": grinder.pk})

    client.post("/notifications/stock-alerts/cancel/", {"product": grinder.pk})

    assert not StockAlert.objects.exists()


# Being told ---------------------------------------------------------------------------------------


def test_a_restock_from_zero_tells_each_requester_once_and_clears_the_requests(make_product, make_user):
    grinder = make_product(name="Burr Grinder", stock=0)
    waiting = [make_user() for _ in range(3)]
    for user in waiting:
        alerts.request_stock_alert(user=user, product=grinder)
    bystander = make_user()

    services.receive_stock(product=grinder, quantity=4)
    services.receive_stock(product=grinder, quantity=4)  # Not from zero: nobody is told again.
    services.write_off_stock(product=grinder, quantity=8)
    services.receive_stock(product=grinder, quantity=1)  # From zero again, but nobody is waiting now.

    for user in waiting:
        [notification] = back_in_stock(user)
        assert notification.title == "Burr Grinder is back in stock"
        assert notification.url == grinder.get_absolute_url()
        assert "4 are available now" in notification.body
    assert back_in_stock(bystander) == []
    assert not StockAlert.objects.exists()


def test_a_rolled_back_restock_tells_nobody_and_keeps_the_requests(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=0)
    alerts.request_stock_alert(user=shopper, product=grinder)

    with pytest.raises(Rollback), transaction.atomic():
        services.receive_stock(product=grinder, quantity=4)
        raise Rollback

    assert back_in_stock(shopper) == []
    assert StockAlert.objects.filter(user=shopper).exists()


def test_stock_returned_by_a_cancelled_order_counts_as_a_restock(make_product, shopper, other_shopper, staff):
    teapot = make_product(name="Teapot", stock=1)
    hold(other_shopper, teapot, 1)
    buy(other_shopper)
    alerts.request_stock_alert(user=shopper, product=teapot)
    order = other_shopper.orders.get()

    services.change_order_status(order=order, status="cancelled", actor=staff)

    assert [n.title for n in back_in_stock(shopper)] == ["Teapot is back in stock"]


@pytest.mark.django_db(transaction=True)
async def test_the_restock_reaches_the_requesters_open_page_live(
    make_product, shopper, in_memory_layer, close_worker_thread_connections
):
    grinder = await sync_to_async(make_product)(name="Burr Grinder", stock=0)
    await sync_to_async(alerts.request_stock_alert)(user=shopper, product=grinder)
    client = await sync_to_async(signed_in)(shopper)
    socket = WebsocketCommunicator(
        application,
        "/ws/notifications/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ],
    )
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "hello"

    await sync_to_async(services.receive_stock)(product=grinder, quantity=2)

    frame = await socket.receive_json_from(timeout=3)
    assert (frame["type"], frame["kind"], frame["title"]) == (
        "notification",
        "back_in_stock",
        "Burr Grinder is back in stock",
    )
    await socket.disconnect()

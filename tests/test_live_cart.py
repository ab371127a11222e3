"""Live cart signals (issue 10): a stock change warns, at once, every cart it leaves short.

The fan-out reads every affected cart line in one query, after commit, off the request path,
and sends one frame a cart to that cart's group; a cart socket joins the group of the cart
its session holds (signed in or anonymous), decided by the server, never by the client.
"""

import secrets
from datetime import date

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client

from notifications import live
from shop import services
from shop.asgi import application
from shop.models import Cart
from shop.payments import Card
from shop.services.errors import OutOfStock
from tests.fakes import SpyLayer, use_layer

OUR_ORIGIN = b"http://127.0.0.1"
CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")


class Rollback(Exception):
    pass


def hold(user, product, quantity):
    cart = services.get_cart(user=user, create=True)
    services.add_to_cart(cart=cart, product=product, quantity=quantity)
    return cart


def anonymous_cart(product, quantity) -> tuple[Client, int]:
    """A browser without an account that put `quantity` of `product` in its cart (through the real view)."""
    client = Client()
    response = client.post("/cart/add/", {"product": product.pk, "quantity": quantity})
    assert response.status_code == 302
    return client, client.session["cart_id"]


def buy(user) -> None:
    async_to_sync(services.place_order)(user=user, checkout_token=secrets.token_urlsafe(24), card=CARD)


# What a line says ----------------------------------------------------------------------------


def test_line_frame_says_how_many_are_left_and_how_many_are_in_the_cart():
    frame = live.line_frame(product_id=7, slug="burr-grinder", name="Burr Grinder", quantity=2, stock=1)

    assert frame["state"] == "short"
    assert frame["message"] == "Only 1 left of Burr Grinder - you have 2 in your cart."
    assert (frame["in_cart"], frame["available"], frame["stock_label"]) == (2, 1, "only 1 left")


@pytest.mark.parametrize(
    ("quantity", "stock", "is_active", "state", "message"),
    [
        (2, 0, True, "sold_out", "Kettle is sold out - you have 2 in your cart."),
        (1, 0, False, "unavailable", "Kettle is no longer available - you have 1 in your cart."),
        (2, 9, True, "ok", "Kettle is available again for the 2 in your cart."),
    ],
)
def test_line_frame_states(quantity, stock, is_active, state, message):
    frame = live.line_frame(product_id=1, slug="k", name="Kettle", quantity=quantity, stock=stock, is_active=is_active)

    assert (frame["state"], frame["message"]) == (state, message)


# Which lines a change touches: one query -------------------------------------------------------


def test_affected_lines_of_many_carts_are_read_in_one_query(make_product, make_user, django_assert_num_queries):
    grinder = make_product(name="Burr Grinder", stock=3)
    for _ in range(30):
        hold(make_user(), grinder, 2)
    fine = hold(make_user(), grinder, 1)  # 1 unit is still there after the change.
    movement = services.write_off_stock(product=grinder, quantity=2)
    changes = live.stock_changes([movement])

    with django_assert_num_queries(1):
        rows = list(live.affected_lines(changes))

    assert len(rows) == 30
    assert fine.pk not in {row[0] for row in rows}


def test_affected_lines_skip_the_cart_of_the_shopper_whose_order_moved_the_stock(make_product, shopper, other_shopper):
    teapot = make_product(name="Teapot", stock=2)
    hold(shopper, teapot, 2)
    others = hold(other_shopper, teapot, 1)

    # Transaction 1 of the checkout: the stock is taken while the buyer's line is still in the cart.
    services.reserve_order(user=shopper, checkout_token=secrets.token_urlsafe(24))

    [movement] = teapot.stock_movements.all()
    rows = list(live.affected_lines(live.stock_changes([movement])))
    assert [row[0] for row in rows] == [others.pk]


def test_a_line_short_before_the_change_hears_when_it_can_be_had_again(make_product, shopper):
    mug = make_product(name="Mug", stock=1)
    cart = hold(shopper, mug, 1)
    services.correct_stock(product=mug, delta=-1)  # Sold out under the shopper's line.

    movement = services.receive_stock(product=mug, quantity=5)

    [(cart_id, _product, _quantity, _slug, _name, stock, _active)] = live.affected_lines(live.stock_changes([movement]))
    assert (cart_id, stock) == (cart.pk, 5)


# The fan-out, after commit --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_one_stock_change_sends_one_frame_to_each_cart_it_left_short_and_none_to_others(
    make_product, make_user, settings, django_capture_on_commit_callbacks
):
    spy = use_layer(settings, SpyLayer)
    grinder = make_product(name="Burr Grinder", stock=2)
    short = [hold(make_user(), grinder, 2) for _ in range(3)]
    fine = hold(make_user(), grinder, 1)

    with django_capture_on_commit_callbacks(execute=True):
        services.write_off_stock(product=grinder, quantity=1)

    sends = [(group, message) for group, message in spy.group_sends if group.startswith("live.cart.")]
    assert sorted(group for group, _ in sends) == sorted(live.cart_group(cart.pk) for cart in short)
    assert live.cart_group(fine.pk) not in dict(sends)
    [line] = sends[0][1]["lines"]
    assert line["message"] == "Only 1 left of Burr Grinder - you have 2 in your cart."
    assert sends[0][1]["type"] == "cart.lines"


def test_a_rolled_back_stock_change_warns_no_cart(make_product, shopper, settings, django_capture_on_commit_callbacks):
    spy = use_layer(settings, SpyLayer)
    grinder = make_product(name="Burr Grinder", stock=2)
    hold(shopper, grinder, 2)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(Rollback), transaction.atomic():
            services.write_off_stock(product=grinder, quantity=2)
            raise Rollback

    assert callbacks == []
    assert spy.group_sends == []


def test_the_fan_out_waits_for_the_commit(make_product, shopper, settings, django_capture_on_commit_callbacks):
    spy = use_layer(settings, SpyLayer)
    grinder = make_product(name="Burr Grinder", stock=2)
    hold(shopper, grinder, 2)

    with django_capture_on_commit_callbacks() as callbacks:
        services.write_off_stock(product=grinder, quantity=2)
        assert spy.group_sends == []  # Nothing before the commit.

    for callback in callbacks:
        callback()
    assert [group for group, _ in spy.group_sends] == [live.cart_group(Cart.objects.get(user=shopper).pk)]


def test_checkout_still_refuses_a_line_that_went_short(make_product, shopper):
    grinder = make_product(name="Burr Grinder", stock=2)
    hold(shopper, grinder, 2)
    services.write_off_stock(product=grinder, quantity=1)

    with pytest.raises(OutOfStock, match="Only 1 left of Burr Grinder"):
        buy(shopper)


# The cart socket ------------------------------------------------------------------------------

socket_tests = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def open_cart_socket(in_memory_layer, close_worker_thread_connections):
    opened = []

    async def open_(client: Client | None, *, path: str = "/ws/cart/"):
        headers = [(b"origin", OUR_ORIGIN)]
        if client is not None and "sessionid" in client.cookies:
            headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        opened.append(communicator)
        communicator.connected, _ = await communicator.connect()
        return communicator

    yield open_
    for communicator in opened:
        await communicator.disconnect()


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@socket_tests
async def test_anonymous_cart_socket_says_hello_with_its_lines(open_cart_socket, make_product):
    grinder = await sync_to_async(make_product)(name="Burr Grinder", stock=5)
    client, _cart_id = await sync_to_async(anonymous_cart)(grinder, 2)

    socket = await open_cart_socket(client)

    hello = await socket.receive_json_from()
    assert hello["type"] == "hello"
    assert [(line["name"], line["in_cart"], line["state"]) for line in hello["lines"]] == [("Burr Grinder", 2, "ok")]


@socket_tests
async def test_anonymous_cart_socket_gets_only_its_own_carts_signals(open_cart_socket, make_product):
    grinder = await sync_to_async(make_product)(name="Burr Grinder", stock=5)
    kettle = await sync_to_async(make_product)(name="Kettle", stock=5)
    mine, _ = await sync_to_async(anonymous_cart)(grinder, 2)
    theirs, _ = await sync_to_async(anonymous_cart)(kettle, 3)
    my_socket = await open_cart_socket(mine)
    their_socket = await open_cart_socket(theirs)
    await my_socket.receive_json_from()
    await their_socket.receive_json_from()

    await sync_to_async(services.write_off_stock)(product=kettle, quantity=4)  # 1 left, they hold 3.

    frame = await their_socket.receive_json_from(timeout=3)
    assert frame["type"] == "lines"
    assert [line["message"] for line in frame["lines"]] == ["Only 1 left of Kettle - you have 3 in your cart."]
    assert await my_socket.receive_nothing(timeout=0.3)


@socket_tests
async def test_cart_socket_follows_the_sessions_cart_whatever_the_client_asks(open_cart_socket, make_product):
    grinder = await sync_to_async(make_product)(name="Burr Grinder", stock=5)
    _other, other_cart_id = await sync_to_async(anonymous_cart)(grinder, 3)
    mine, my_cart_id = await sync_to_async(anonymous_cart)(grinder, 1)

    socket = await open_cart_socket(mine, path=f"/ws/cart/?cart={other_cart_id}&cart_id={other_cart_id}")
    await socket.receive_json_from()

    layer = get_channel_layer()
    assert layer.groups.keys() == {live.cart_group(my_cart_id)}


@socket_tests
async def test_signed_in_cart_socket_gets_the_users_cart_and_the_buyer_is_not_warned(
    open_cart_socket, make_product, shopper, other_shopper
):
    teapot = await sync_to_async(make_product)(name="Teapot", stock=1)
    await sync_to_async(hold)(shopper, teapot, 1)
    await sync_to_async(hold)(other_shopper, teapot, 1)
    buyer_socket = await open_cart_socket(await sync_to_async(signed_in)(shopper))
    waiting_socket = await open_cart_socket(await sync_to_async(signed_in)(other_shopper))
    await buyer_socket.receive_json_from()
    await waiting_socket.receive_json_from()

    await services.place_order(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    frame = await waiting_socket.receive_json_from(timeout=3)
    assert [(line["state"], line["message"]) for line in frame["lines"]] == [
        ("sold_out", "Teapot is sold out - you have 1 in your cart.")
    ]
    assert await buyer_socket.receive_nothing(timeout=0.3)


@socket_tests
async def test_a_session_without_a_cart_is_closed_with_4404_and_joins_nothing(open_cart_socket, shopper):
    for client in (None, Client(), await sync_to_async(signed_in)(shopper)):
        socket = await open_cart_socket(client)

        assert socket.connected
        assert await socket.receive_output() == {"type": "websocket.close", "code": 4404}
    assert get_channel_layer().groups == {}


@socket_tests
async def test_cart_socket_answers_ping_and_refuses_anything_else(open_cart_socket, make_product):
    grinder = await sync_to_async(make_product)(name="Burr Grinder", stock=5)
    client, _ = await sync_to_async(anonymous_cart)(grinder, 1)
    socket = await open_cart_socket(client)
    await socket.receive_json_from()

    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from() == {"type": "pong"}
    await socket.send_json_to({"type": "subscribe", "cart": 1})
    assert (await socket.receive_json_from())["code"] == "unknown_type"

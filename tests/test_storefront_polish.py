"""Small things a shopper notices (issue 9): messages that say what happened, markup that assistive technology reads."""

import re
import secrets
from datetime import date

import pytest
from asgiref.sync import async_to_sync

from notifications.models import Notification
from shop import services
from shop.models import Order
from shop.payments import Card

pytestmark = pytest.mark.django_db

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


def text(response) -> str:
    return response.content.decode()


def test_logging_in_says_so(client, shopper):
    response = client.post("/accounts/login/", {"username": "alice", "password": "a-good-password-123"}, follow=True)
    assert "Welcome back, alice! You are logged in." in text(response)


def test_logging_out_says_so(client, shopper):
    client.force_login(shopper)
    response = client.post("/accounts/logout/", follow=True)
    assert "You are logged out. See you soon!" in text(response)


def test_a_new_account_is_welcomed_once(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "password1": "tea-kettle-77-x",
            "password2": "tea-kettle-77-x",
        },
        follow=True,
    )
    page = text(response)
    assert "Welcome, newbie! Your account is ready." in page
    assert "Welcome back" not in page


def test_checkout_sends_a_visitor_to_log_in_and_says_why(client, make_product):
    product = make_product(name="Kettle")
    client.post("/cart/add/", {"product": product.pk, "quantity": 1})

    response = client.get("/checkout/", follow=True)

    assert response.redirect_chain == [("/accounts/login/?next=/checkout/", 302)]
    assert "Please log in or create an account to check out. Your cart will be waiting for you." in text(response)


def test_flash_messages_are_a_plain_list_inside_a_live_region(client, make_product):
    product = make_product(name="Kettle")
    response = client.post("/cart/add/", {"product": product.pk, "quantity": 1}, follow=True)
    page = text(response)
    region = re.search(
        r'<div class="messages-region" role="status">\s*<ul class="messages">(.*?)</ul>', page, re.DOTALL
    )
    assert region, "the messages list should sit in a role=status region"
    assert re.search(r'<li class="message message-success">Added 1 × Kettle to your cart.</li>', region[1])
    assert not re.search(r"<li[^>]*\brole=", page)  # A role on an <li> breaks the list (axe: listitem).


def test_an_empty_inbox_has_no_mark_all_read_button(client, shopper):
    client.force_login(shopper)
    page = text(client.get("/notifications/"))
    assert "No notifications yet." in page
    assert "Mark all read" not in page


def test_an_inbox_with_notifications_keeps_mark_all_read(client, shopper):
    Notification.objects.create(recipient=shopper, kind="order_shipped", title="Order X has shipped", seq=1)
    client.force_login(shopper)
    assert "Mark all read" in text(client.get("/notifications/"))


def test_the_live_updates_dot_keeps_the_hooks_the_client_uses(client, shopper):
    client.force_login(shopper)
    page = text(client.get("/"))
    state = re.search(r'<span id="connection-state" data-state="connecting" title="[^"]+">(.*?)</span></span>', page)
    assert state and state[1] == '<span class="visually-hidden">Connecting to live updates…'


def test_the_refund_notification_writes_money_the_shops_way(shopper, make_product, staff):
    product = make_product(name="Kettle", price="1234.50")
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=1)
    order = async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    services.change_order_status(order=order, status=Order.Status.REFUNDED, actor=staff)

    refund = Notification.objects.get(recipient=shopper, kind="order_refunded")
    assert refund.body == "€1,234.50 is on its way back to your card."


def test_the_orders_list_writes_money_the_shops_way(client, shopper, make_product):
    product = make_product(name="Kettle", price="1234.50")
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=1)
    async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)
    client.force_login(shopper)
    assert "€1,234.50" in text(client.get("/orders/"))

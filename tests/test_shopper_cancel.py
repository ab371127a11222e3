"""A shopper cancels their own order (issue 9): while it is paid and not shipped, through the staff's service path."""

import secrets
from datetime import date

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from notifications.models import Notification
from shop import services
from shop.models import Order, OrderEvent, Payment, Product, StockMovement
from shop.payments import Card

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def shopper_client(client, shopper):
    client.force_login(shopper)
    return client


def text(response) -> str:
    return response.content.decode()


def paid_order(user, product, quantity=2) -> Order:
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=product, quantity=quantity)
    return async_to_sync(services.place_order)(user=user, checkout_token=secrets.token_urlsafe(24), card=CARD)


# The service ------------------------------------------------------------------------------------


def test_cancelling_a_paid_order_refunds_returns_the_stock_and_tells_the_shopper(shopper, kettle, bank):
    order = paid_order(shopper, kettle)

    services.cancel_order_for_shopper(order=order, user=shopper)

    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert Product.objects.get(pk=kettle.pk).stock == 10
    refund = Payment.objects.get(order=order, kind=Payment.Kind.REFUND)
    assert refund.amount == order.total
    assert bank.refunds and bank.refunds[0].amount == order.total
    movement = StockMovement.objects.get(order=order, reason=StockMovement.Reason.RETURNED)
    assert (movement.delta, movement.actor) == (2, shopper)
    event = order.events.last()
    assert (event.from_status, event.to_status, event.actor) == ("paid", "cancelled", shopper)
    notification = Notification.objects.filter(recipient=shopper).order_by("-pk").first()
    assert (notification.kind, notification.title) == ("order_cancelled", f"Order {order.number} was cancelled")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (Order.Status.SHIPPED, "has already shipped, so it can no longer be cancelled"),
        (Order.Status.DELIVERED, "has already shipped, so it can no longer be cancelled"),
        (Order.Status.REFUNDED, "is refunded and cannot be cancelled"),
        (Order.Status.CANCELLED, "is cancelled and cannot be cancelled"),
    ],
)
def test_an_order_past_paid_cannot_be_cancelled_by_the_shopper(shopper, kettle, bank, status, message):
    order = paid_order(shopper, kettle)
    Order.objects.filter(pk=order.pk).update(status=status)
    events = OrderEvent.objects.count()

    with pytest.raises(services.InvalidTransition, match=message):
        services.cancel_order_for_shopper(order=order, user=shopper)

    assert Order.objects.get(pk=order.pk).status == status
    assert OrderEvent.objects.count() == events
    assert not Payment.objects.filter(kind=Payment.Kind.REFUND).exists()


def test_a_pending_order_cannot_be_cancelled_by_the_shopper(shopper, kettle):
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=1)
    order = services.reserve_order(user=shopper, checkout_token="being-paid")
    with pytest.raises(services.InvalidTransition, match="still being paid"):
        services.cancel_order_for_shopper(order=order, user=shopper)
    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING


def test_a_shopper_cannot_cancel_someone_elses_order(shopper, other_shopper, kettle):
    order = paid_order(other_shopper, kettle)
    with pytest.raises(services.InvalidTransition, match="not your order"):
        services.cancel_order_for_shopper(order=order, user=shopper)
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID


def test_the_status_is_checked_again_under_the_lock(shopper, kettle, staff):
    """The page showed a paid order; staff shipped it since: the shopper's cancel is refused."""
    order = paid_order(shopper, kettle)
    seen = Order.objects.get(pk=order.pk)  # Loaded while paid...
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)  # ...shipped since.

    with pytest.raises(services.InvalidTransition, match="already shipped"):
        services.cancel_order_for_shopper(order=seen, user=shopper)
    assert Order.objects.get(pk=order.pk).status == Order.Status.SHIPPED


# The pages ----------------------------------------------------------------------------------------


def test_a_paid_order_page_offers_to_cancel_and_a_shipped_one_does_not(shopper_client, shopper, kettle, staff):
    order = paid_order(shopper, kettle)
    cancel_url = f"/orders/{order.number}/cancel/"
    assert f'href="{cancel_url}"' in text(shopper_client.get(order.get_absolute_url()))
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)
    assert cancel_url not in text(shopper_client.get(order.get_absolute_url()))


def test_cancelling_asks_first_then_cancels_on_post(shopper_client, shopper, kettle):
    order = paid_order(shopper, kettle)
    url = f"/orders/{order.number}/cancel/"

    confirm = shopper_client.get(url)
    assert confirm.status_code == 200
    page = text(confirm)
    assert f"Cancel order {order.number}?" in page and "€50.00" in page
    assert f'<form method="post" action="{url}"' in page and "csrfmiddlewaretoken" in page
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID  # A GET changes nothing.

    done = shopper_client.post(url, follow=True)

    assert done.redirect_chain == [(order.get_absolute_url(), 302)]
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED
    page = text(done)
    assert f"Order {order.number} is cancelled. The €50.00 you paid is on its way back to your card." in page
    assert "data-order-status>Cancelled<" in page
    assert "by you" in page


def test_cancelling_a_shipped_order_is_refused_clearly(shopper_client, shopper, kettle, staff):
    order = paid_order(shopper, kettle)
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)
    url = f"/orders/{order.number}/cancel/"

    confirm = shopper_client.get(url)
    assert confirm.status_code == 409
    assert "has already shipped, so it can no longer be cancelled" in text(confirm)
    assert "Yes, cancel the order" not in text(confirm)

    done = shopper_client.post(url, follow=True)
    assert "has already shipped, so it can no longer be cancelled" in text(done)
    assert Order.objects.get(pk=order.pk).status == Order.Status.SHIPPED


def test_another_shoppers_order_cannot_be_cancelled_or_even_seen(shopper_client, other_shopper, kettle):
    order = paid_order(other_shopper, kettle)
    url = f"/orders/{order.number}/cancel/"
    assert shopper_client.get(url).status_code == 404
    assert shopper_client.post(url).status_code == 404
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID


def test_cancelling_needs_a_login_and_a_csrf_token(shopper, kettle):
    order = paid_order(shopper, kettle)
    url = f"/orders/{order.number}/cancel/"
    anonymous = Client().post(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")

    forged = Client(enforce_csrf_checks=True)
    forged.force_login(shopper)
    assert forged.post(url).status_code == 403
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID


def test_cancelling_answers_only_get_and_post(shopper_client, shopper, kettle):
    order = paid_order(shopper, kettle)
    assert shopper_client.put(f"/orders/{order.number}/cancel/").status_code == 405

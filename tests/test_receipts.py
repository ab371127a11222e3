"""The receipt (issue 9): sent to the address given at checkout, with the delivery address, and noted on the order."""

import secrets
from datetime import date

import pytest
from asgiref.sync import async_to_sync
from django.core.mail.backends.locmem import EmailBackend as LocmemEmailBackend

from shop import services
from shop.models import Order, Product
from shop.payments import Card
from tests.worker import run_worker

pytestmark = pytest.mark.django_db(transaction=True)

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 2, cvc="123")
ADDRESS = services.ShippingAddress(
    full_name="Alice Martin",
    line1="12 Rue de la Paix",
    line2="Floor 3",
    city="Paris",
    postal_code="75002",
    country="FR",
)


class FailingBackend(LocmemEmailBackend):
    def send_messages(self, messages):
        raise ConnectionRefusedError("the mail server is down")


def pay(user, *, email: str = "") -> Order:
    kettle = Product.objects.create(name="Kettle", slug=f"kettle-{secrets.token_hex(4)}", price="1234.50", stock=10)
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=kettle, quantity=2)
    return async_to_sync(services.place_order)(
        user=user, checkout_token=secrets.token_urlsafe(24), card=CARD, shipping=ADDRESS, email=email
    )


def test_the_receipt_goes_to_the_checkout_email_shows_the_address_and_is_noted_on_the_order(shopper, mailoutbox):
    order = pay(shopper, email="alice.receipts@example.com")

    run_worker()

    [email] = mailoutbox
    assert email.to == ["alice.receipts@example.com"]
    assert "Hello Alice Martin," in email.body
    assert "2 x Kettle at €1,234.50 = €2,469.00" in email.body
    assert "Total: €2,469.00" in email.body
    for line in ("Alice Martin", "12 Rue de la Paix", "Floor 3", "75002 Paris", "France"):
        assert f"  {line}\n" in email.body
    order.refresh_from_db()
    assert order.receipt_sent_to == "alice.receipts@example.com"
    assert order.receipt_sent_at is not None


def test_without_a_checkout_email_the_receipt_goes_to_the_account(shopper, mailoutbox):
    order = pay(shopper)
    run_worker()
    [email] = mailoutbox
    assert email.to == [shopper.email]
    order.refresh_from_db()
    assert order.receipt_sent_to == shopper.email


def test_a_receipt_the_mail_server_did_not_take_is_not_noted(shopper, mailoutbox, settings):
    settings.EMAIL_BACKEND = f"{__name__}.FailingBackend"
    order = pay(shopper, email="alice.receipts@example.com")

    run_worker()

    order.refresh_from_db()
    assert (order.receipt_sent_to, order.receipt_sent_at) == ("", None)


def test_the_order_placed_notification_writes_money_the_shops_way(shopper):
    order = pay(shopper)
    notification = shopper.notifications.get()
    assert notification.body == "We received your payment of €2,469.00. We will tell you when it ships."
    assert order.total == 2469

"""Domain actions of the shop: cart rules, cart merge at login, checkout, the order pipeline."""

import asyncio
import secrets
import threading
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.messages import get_messages
from django.db import connection

from shop import services
from shop.models import Cart, Order, OrderEvent, Payment, Product
from shop.payments import (
    BankUnavailable,
    Card,
    InsufficientFunds,
    PaymentDeclined,
    PaymentError,
    SandboxBank,
    get_gateway,
)
from shop.signals import order_placed, order_status_changed

NEXT_YEAR = date.today().year + 1
APPROVED = Card(number="4242424242424242", expiry_month=12, expiry_year=NEXT_YEAR, cvc="123")
DECLINED = Card(number="4000000000000002", expiry_month=12, expiry_year=NEXT_YEAR, cvc="123")
NO_FUNDS = Card(number="4000000000009995", expiry_month=12, expiry_year=NEXT_YEAR, cvc="123")
BANK_ERROR = Card(number="4000000000000119", expiry_month=12, expiry_year=NEXT_YEAR, cvc="123")


def close_db_connection() -> None:
    """Close this thread's connection (async tests run the ORM in asgiref's worker thread)."""
    connection.close()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cart_of(user) -> Cart:
    return services.get_cart(user=user, create=True)


def quantities(cart: Cart) -> dict[str, int]:
    return {line.product.name: line.quantity for line in cart.lines_with_products()}


def checkout(user, card: Card = APPROVED, token: str | None = None) -> Order:
    return async_to_sync(services.place_order)(user=user, checkout_token=token or new_token(), card=card)


@pytest.fixture
def received():
    """Record every order_placed and order_status_changed signal sent during the test."""
    calls: list[tuple[str, dict]] = []

    def on_placed(sender, **kwargs):
        calls.append(("placed", kwargs))

    def on_changed(sender, **kwargs):
        calls.append(("changed", kwargs))

    order_placed.connect(on_placed, weak=False, dispatch_uid="test-services-placed")
    order_status_changed.connect(on_changed, weak=False, dispatch_uid="test-services-changed")
    yield calls
    order_placed.disconnect(dispatch_uid="test-services-placed")
    order_status_changed.disconnect(dispatch_uid="test-services-changed")


@pytest.fixture
def paid_order(shopper, make_product):
    """A PAID order of 2 units of a product that has 8 left afterwards."""
    product = make_product(name="Kettle", price="25.00", stock=10)
    services.add_to_cart(cart=cart_of(shopper), product=product, quantity=2)
    return checkout(shopper)


# Cart rules ---------------------------------------------------------------------------


def test_add_to_cart_creates_a_line(shopper, make_product):
    product = make_product(name="Kettle", stock=5)
    cart = cart_of(shopper)
    line = services.add_to_cart(cart=cart, product=product, quantity=2)
    assert (line.product, line.quantity) == (product, 2)
    assert cart.item_count == 2
    assert cart.total == Decimal("20.00")


def test_adding_the_same_product_again_accumulates(shopper, make_product):
    product = make_product(name="Kettle", stock=5)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=2)
    services.add_to_cart(cart=cart, product=product, quantity=3)
    assert quantities(cart) == {"Kettle": 5}
    assert cart.lines.count() == 1


def test_adding_more_than_stock_says_how_many_are_left(shopper, make_product):
    product = make_product(name="Kettle", stock=2)
    cart = cart_of(shopper)
    with pytest.raises(services.OutOfStock, match=r"^Only 2 left of Kettle\.$"):
        services.add_to_cart(cart=cart, product=product, quantity=3)
    assert not cart.lines.exists()


def test_adding_checks_the_new_total_against_stock(shopper, make_product):
    product = make_product(name="Kettle", stock=4)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=3)
    with pytest.raises(services.OutOfStock, match="Only 4 left of Kettle"):
        services.add_to_cart(cart=cart, product=product, quantity=2)
    assert quantities(cart) == {"Kettle": 3}


def test_adding_a_sold_out_product_is_refused(shopper, make_product):
    product = make_product(name="Kettle", stock=0)
    cart = cart_of(shopper)
    with pytest.raises(services.OutOfStock, match=r"^Kettle is sold out\.$"):
        services.add_to_cart(cart=cart, product=product, quantity=1)
    assert not cart.lines.exists()


def test_adding_an_inactive_product_is_refused(shopper, make_product):
    product = make_product(name="Kettle", stock=5, is_active=False)
    cart = cart_of(shopper)
    with pytest.raises(services.OutOfStock, match="Kettle is no longer available"):
        services.add_to_cart(cart=cart, product=product, quantity=1)
    assert not cart.lines.exists()


def test_a_line_cannot_exceed_the_maximum_quantity(shopper, make_product, settings):
    product = make_product(name="Kettle", stock=100)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=settings.SHOP_MAX_QUANTITY_PER_LINE)
    with pytest.raises(services.QuantityNotAllowed, match=f"at most {settings.SHOP_MAX_QUANTITY_PER_LINE} of Kettle"):
        services.add_to_cart(cart=cart, product=product, quantity=1)
    assert quantities(cart) == {"Kettle": settings.SHOP_MAX_QUANTITY_PER_LINE}


def test_update_sets_the_quantity(shopper, make_product):
    product = make_product(name="Kettle", stock=9)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=2)
    services.update_cart_line(cart=cart, product=product, quantity=7)
    assert quantities(cart) == {"Kettle": 7}


def test_update_beyond_stock_is_refused_and_keeps_the_line(shopper, make_product):
    product = make_product(name="Kettle", stock=3)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=2)
    with pytest.raises(services.OutOfStock, match="Only 3 left of Kettle"):
        services.update_cart_line(cart=cart, product=product, quantity=4)
    assert quantities(cart) == {"Kettle": 2}


def test_update_to_zero_removes_the_line(shopper, make_product):
    product = make_product(name="Kettle", stock=9)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=product, quantity=2)
    assert services.update_cart_line(cart=cart, product=product, quantity=0) is None
    assert not cart.lines.exists()


def test_remove_deletes_only_that_line(shopper, make_product):
    kettle, mug = make_product(name="Kettle"), make_product(name="Mug")
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=kettle, quantity=1)
    services.add_to_cart(cart=cart, product=mug, quantity=2)
    services.remove_from_cart(cart=cart, product=kettle)
    assert quantities(cart) == {"Mug": 2}


# Merge at login -----------------------------------------------------------------------


def _log_in(client, username: str):
    return client.post("/accounts/login/", {"username": username, "password": "a-good-password-123"})


def test_login_moves_the_anonymous_cart_into_the_users_cart(client, shopper, make_product):
    kettle, mug = make_product(name="Kettle", stock=10), make_product(name="Mug", stock=10)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=1)
    assert client.post("/cart/add/", {"product": kettle.pk, "quantity": 2}).status_code == 302
    assert client.post("/cart/add/", {"product": mug.pk, "quantity": 3}).status_code == 302
    anonymous_cart_id = client.session["cart_id"]

    response = _log_in(client, "alice")

    assert response.status_code == 302
    assert quantities(cart_of(shopper)) == {"Kettle": 3, "Mug": 3}
    assert not Cart.objects.filter(pk=anonymous_cart_id).exists()
    assert "cart_id" not in client.session


def test_login_merge_caps_quantities_at_stock_and_says_so(client, shopper, make_product):
    kettle = make_product(name="Kettle", stock=4)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)
    client.post("/cart/add/", {"product": kettle.pk, "quantity": 4})

    response = _log_in(client, "alice")

    assert quantities(cart_of(shopper)) == {"Kettle": 4}
    notes = [str(message) for message in get_messages(response.wsgi_request) if "adjusted" in str(message)]
    assert notes == ["Your cart was adjusted: Only 4 left of Kettle."]


def test_login_merge_drops_what_sold_out_meanwhile(client, shopper, make_product):
    kettle = make_product(name="Kettle", stock=4)
    client.post("/cart/add/", {"product": kettle.pk, "quantity": 2})
    Product.objects.filter(pk=kettle.pk).update(stock=0)

    response = _log_in(client, "alice")

    assert quantities(cart_of(shopper)) == {}
    notes = [str(message) for message in get_messages(response.wsgi_request) if "adjusted" in str(message)]
    assert notes == ["Your cart was adjusted: Kettle is sold out."]


# Checkout -----------------------------------------------------------------------------


def test_approved_card_pays_the_order_and_takes_the_stock(shopper, make_product, bank, received):
    kettle, mug = make_product(name="Kettle", price="25.00", stock=10), make_product(name="Mug", price="4.50", stock=3)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=kettle, quantity=2)
    services.add_to_cart(cart=cart, product=mug, quantity=3)

    order = checkout(shopper)

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.user == shopper
    assert order.total == Decimal("63.50")
    assert [(line.product_name, line.unit_price, line.quantity) for line in order.lines.order_by("product_name")] == [
        ("Kettle", Decimal("25.00"), 2),
        ("Mug", Decimal("4.50"), 3),
    ]
    payment = Payment.objects.get()
    assert (payment.order, payment.kind, payment.status) == (order, Payment.Kind.CHARGE, Payment.Status.CAPTURED)
    assert (payment.amount, payment.card_last4) == (Decimal("63.50"), "4242")
    assert payment.reference == bank.charges[0].reference
    assert len(bank.charges) == 1
    assert [(event.from_status, event.to_status) for event in order.events.all()] == [
        ("", Order.Status.PENDING),
        (Order.Status.PENDING, Order.Status.PAID),
    ]
    kettle.refresh_from_db()
    mug.refresh_from_db()
    assert (kettle.stock, mug.stock) == (8, 0)
    assert not cart.lines.exists()
    assert [(name, kwargs["order"].pk) for name, kwargs in received] == [("placed", order.pk)]


def test_checkout_leaves_products_added_to_other_carts_alone(shopper, other_shopper, make_product):
    kettle = make_product(name="Kettle", stock=10)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)
    services.add_to_cart(cart=cart_of(other_shopper), product=kettle, quantity=1)
    checkout(shopper)
    assert quantities(cart_of(other_shopper)) == {"Kettle": 1}


def test_declined_card_creates_no_order_and_restores_stock(shopper, make_product, bank, received):
    kettle = make_product(name="Kettle", price="25.00", stock=3)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=kettle, quantity=2)

    with pytest.raises(PaymentDeclined, match="Your card was declined") as raised:
        checkout(shopper, DECLINED)

    assert type(raised.value) is PaymentDeclined
    assert not Order.objects.exists()
    kettle.refresh_from_db()
    assert kettle.stock == 3
    assert quantities(cart) == {"Kettle": 2}
    payment = Payment.objects.get()
    assert (payment.status, payment.order, payment.user) == (Payment.Status.DECLINED, None, shopper)
    assert (payment.amount, payment.card_last4) == (Decimal("50.00"), "0002")
    assert "declined" in payment.message
    assert bank.charges == []
    assert received == []


def test_insufficient_funds_is_refused_with_its_own_message(shopper, make_product, bank):
    kettle = make_product(name="Kettle", stock=3)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=1)

    with pytest.raises(InsufficientFunds, match="insufficient funds"):
        checkout(shopper, NO_FUNDS)

    assert not Order.objects.exists()
    assert Payment.objects.get().status == Payment.Status.DECLINED
    kettle.refresh_from_db()
    assert kettle.stock == 3
    assert bank.charges == []


def test_bank_error_records_a_failed_payment_and_no_order(shopper, make_product, bank):
    kettle = make_product(name="Kettle", stock=3)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=kettle, quantity=1)

    with pytest.raises(BankUnavailable, match="You have not been charged"):
        checkout(shopper, BANK_ERROR)

    assert not Order.objects.exists()
    payment = Payment.objects.get()
    assert (payment.status, payment.order) == (Payment.Status.FAILED, None)
    kettle.refresh_from_db()
    assert kettle.stock == 3
    assert quantities(cart) == {"Kettle": 1}
    assert bank.charges == []


def test_a_gateway_crash_is_reported_as_bank_unavailable(shopper, make_product, settings):
    settings.PAYMENT_GATEWAY = "tests.test_services.CrashingGateway"
    kettle = make_product(name="Kettle", stock=3)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=1)

    with pytest.raises(BankUnavailable):
        checkout(shopper)

    assert not Order.objects.exists()
    assert Payment.objects.get().status == Payment.Status.FAILED
    kettle.refresh_from_db()
    assert kettle.stock == 3


class CrashingGateway:
    """A gateway whose client library blows up (a bug or a network error outside our control)."""

    async def charge(self, **kwargs):
        raise ConnectionResetError("peer reset")


def test_resubmitting_the_same_checkout_makes_one_order_and_one_charge(shopper, make_product, bank, received):
    kettle = make_product(name="Kettle", stock=10)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)
    token = new_token()

    first = checkout(shopper, token=token)
    second = checkout(shopper, token=token)

    assert first.pk == second.pk
    assert Order.objects.count() == 1
    assert Payment.objects.count() == 1
    assert len(bank.charges) == 1
    kettle.refresh_from_db()
    assert kettle.stock == 8
    assert [name for name, _ in received] == ["placed"]


def test_another_users_checkout_token_is_refused(shopper, other_shopper, make_product, bank):
    kettle = make_product(name="Kettle", stock=10)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=1)
    services.add_to_cart(cart=cart_of(other_shopper), product=kettle, quantity=1)
    token = new_token()
    checkout(shopper, token=token)

    with pytest.raises(services.CheckoutExpired, match="expired"):
        checkout(other_shopper, token=token)

    assert Order.objects.count() == 1
    assert len(bank.charges) == 1


@pytest.mark.django_db(transaction=True)
async def test_concurrent_checkouts_with_one_token_make_one_order(shopper, make_product, bank, received):
    kettle = await sync_to_async(make_product)(name="Kettle", stock=10)
    await sync_to_async(services.add_to_cart)(cart=await sync_to_async(cart_of)(shopper), product=kettle, quantity=2)
    token = new_token()
    try:
        first, second = await asyncio.gather(
            services.place_order(user=shopper, checkout_token=token, card=APPROVED),
            services.place_order(user=shopper, checkout_token=token, card=APPROVED),
        )
        assert first.pk == second.pk
        assert await Order.objects.acount() == 1
        assert (await Order.objects.aget()).status == Order.Status.PAID
        assert await Payment.objects.acount() == 1
        assert len(bank.charges) == 1
        assert (await Product.objects.aget(pk=kettle.pk)).stock == 8
        assert [name for name, _ in received] == ["placed"]
    finally:
        await sync_to_async(close_db_connection)()


def test_out_of_stock_at_checkout_keeps_the_cart_and_charges_nothing(shopper, make_product, bank):
    kettle, mug = make_product(name="Kettle", stock=5), make_product(name="Mug", stock=5)
    cart = cart_of(shopper)
    services.add_to_cart(cart=cart, product=kettle, quantity=3)
    services.add_to_cart(cart=cart, product=mug, quantity=1)
    Product.objects.filter(pk=kettle.pk).update(stock=1)
    Product.objects.filter(pk=mug.pk).update(stock=0)

    with pytest.raises(services.OutOfStock) as raised:
        checkout(shopper)

    assert "Only 1 left of Kettle." in raised.value.message
    assert "Mug is sold out." in raised.value.message
    assert quantities(cart) == {"Kettle": 3, "Mug": 1}
    assert not Order.objects.exists()
    assert not Payment.objects.exists()
    assert bank.charges == []
    assert list(Product.objects.order_by("name").values_list("stock", flat=True)) == [1, 0]


def test_checkout_of_an_empty_cart_is_refused(shopper, bank):
    with pytest.raises(services.EmptyCart, match="Your cart is empty"):
        checkout(shopper)
    cart_of(shopper)
    with pytest.raises(services.EmptyCart, match="Your cart is empty"):
        checkout(shopper)
    assert not Order.objects.exists()
    assert bank.charges == []


# Order pipeline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "target", "message"),
    [
        ([], Order.Status.DELIVERED, "is paid and cannot be marked delivered"),
        ([], Order.Status.PAID, "becomes paid only when the bank captures"),
        (
            [Order.Status.SHIPPED, Order.Status.DELIVERED],
            Order.Status.SHIPPED,
            "is delivered and cannot be marked shipped",
        ),
        ([Order.Status.SHIPPED], Order.Status.CANCELLED, "is shipped and cannot be marked cancelled"),
        ([Order.Status.SHIPPED], Order.Status.PAID, "becomes paid only when the bank captures"),
        ([Order.Status.CANCELLED], Order.Status.PAID, "becomes paid only when the bank captures"),
        ([Order.Status.CANCELLED], Order.Status.SHIPPED, "is cancelled and cannot be marked shipped"),
        ([Order.Status.REFUNDED], Order.Status.CANCELLED, "is refunded and cannot be marked cancelled"),
    ],
)
def test_illegal_status_change_is_refused_and_changes_nothing(paid_order, staff, received, path, target, message):
    for status in path:
        services.change_order_status(order=paid_order, status=status, actor=staff)
    paid_order.refresh_from_db()
    before = (paid_order.status, paid_order.events.count(), len(received))

    with pytest.raises(services.InvalidTransition, match=message) as raised:
        services.change_order_status(order=paid_order, status=target, actor=staff)

    if target != Order.Status.PAID:
        assert paid_order.number in raised.value.message
    paid_order.refresh_from_db()
    assert (paid_order.status, paid_order.events.count(), len(received)) == before


def test_unknown_status_is_refused(paid_order, staff):
    with pytest.raises(services.InvalidTransition, match="'lost' is not an order status"):
        services.change_order_status(order=paid_order, status="lost", actor=staff)


def test_shipping_then_delivering_records_events_with_the_actor(paid_order, staff, received):
    received.clear()
    services.change_order_status(order=paid_order, status=Order.Status.SHIPPED, actor=staff)
    order = services.change_order_status(order=paid_order, status=Order.Status.DELIVERED, actor=staff)

    assert order.status == Order.Status.DELIVERED
    assert Order.objects.get(pk=order.pk).status == Order.Status.DELIVERED
    events = list(OrderEvent.objects.filter(order=order, actor__isnull=False))
    assert [(event.from_status, event.to_status, event.actor) for event in events] == [
        (Order.Status.PAID, Order.Status.SHIPPED, staff),
        (Order.Status.SHIPPED, Order.Status.DELIVERED, staff),
    ]
    assert [
        (name, kwargs["order"].status, kwargs["previous_status"], kwargs["actor"]) for name, kwargs in received
    ] == [
        ("changed", Order.Status.SHIPPED, Order.Status.PAID, staff),
        ("changed", Order.Status.DELIVERED, Order.Status.SHIPPED, staff),
    ]


def test_cancelling_a_paid_order_returns_stock_and_money_once(paid_order, staff, bank, received):
    received.clear()
    order = services.change_order_status(order=paid_order, status=Order.Status.CANCELLED, actor=staff)

    assert order.status == Order.Status.CANCELLED
    assert Product.objects.get(name="Kettle").stock == 10
    assert len(bank.refunds) == 1
    refund = Payment.objects.get(kind=Payment.Kind.REFUND)
    assert (refund.order, refund.status, refund.amount) == (order, Payment.Status.REFUNDED, Decimal("50.00"))
    assert refund.reference == bank.refunds[0].reference
    event = order.events.last()
    assert (event.from_status, event.to_status, event.actor) == (Order.Status.PAID, Order.Status.CANCELLED, staff)
    assert [(name, kwargs["previous_status"]) for name, kwargs in received] == [("changed", Order.Status.PAID)]

    with pytest.raises(services.InvalidTransition, match="is cancelled and cannot be marked cancelled"):
        services.change_order_status(order=order, status=Order.Status.CANCELLED, actor=staff)
    # A stale copy of the order (a double-clicked admin action) is refused too, without a second refund.
    with pytest.raises(services.InvalidTransition):
        services.change_order_status(order=paid_order, status=Order.Status.CANCELLED, actor=staff)

    assert len(bank.refunds) == 1
    assert Payment.objects.filter(kind=Payment.Kind.REFUND).count() == 1
    assert Product.objects.get(name="Kettle").stock == 10
    assert len(received) == 1


def test_refunding_a_shipped_order_returns_money_but_not_stock(paid_order, staff, bank):
    services.change_order_status(order=paid_order, status=Order.Status.SHIPPED, actor=staff)
    order = services.change_order_status(order=paid_order, status=Order.Status.REFUNDED, actor=staff)

    assert Order.objects.get(pk=order.pk).status == Order.Status.REFUNDED
    assert Product.objects.get(name="Kettle").stock == 8
    assert len(bank.refunds) == 1
    assert bank.refunds[0].amount == Decimal("50.00")
    assert Payment.objects.filter(kind=Payment.Kind.REFUND, status=Payment.Status.REFUNDED, order=order).count() == 1


def test_refunding_a_paid_order_before_shipping_returns_stock_too(paid_order, staff, bank):
    services.change_order_status(order=paid_order, status=Order.Status.REFUNDED, actor=staff)
    assert Product.objects.get(name="Kettle").stock == 10
    assert len(bank.refunds) == 1


def test_cancelling_a_pending_order_returns_stock_without_a_refund(shopper, make_product, staff, bank):
    kettle = make_product(name="Kettle", stock=5)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)
    order = services.reserve_order(user=shopper, checkout_token=new_token())
    kettle.refresh_from_db()
    assert (order.status, kettle.stock) == (Order.Status.PENDING, 3)

    services.change_order_status(order=order, status=Order.Status.CANCELLED, actor=staff)

    kettle.refresh_from_db()
    assert kettle.stock == 5
    assert bank.refunds == []
    assert not Payment.objects.exists()


def test_system_status_change_records_no_actor(paid_order, received):
    received.clear()
    services.change_order_status(order=paid_order, status=Order.Status.SHIPPED)
    assert paid_order.events.last().actor is None
    assert received[0][1]["actor"] is None


class CancellingBank(SandboxBank):
    """A bank that is slow enough for staff to cancel the pending order before it answers."""

    async def charge(self, **kwargs):
        order = await Order.objects.aget(status=Order.Status.PENDING)
        await sync_to_async(services.change_order_status)(order=order, status=Order.Status.CANCELLED)
        return await super().charge(**kwargs)


def test_order_cancelled_while_the_bank_answers_gets_its_charge_refunded(shopper, make_product, settings):
    settings.PAYMENT_GATEWAY = "tests.test_services.CancellingBank"
    bank = get_gateway()
    kettle = make_product(name="Kettle", stock=5)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)

    with pytest.raises(PaymentError, match="cancelled while your payment was processing; the charge was refunded"):
        checkout(shopper)

    order = Order.objects.get()
    assert order.status == Order.Status.CANCELLED
    assert len(bank.charges) == 1 and len(bank.refunds) == 1
    assert Payment.objects.filter(order=order, kind=Payment.Kind.REFUND).count() == 1
    kettle.refresh_from_db()
    assert kettle.stock == 5


class ShippingDuringRefundBank(SandboxBank):
    """A bank slow to refund, while another staff member tries to ship the same order."""

    rival_outcome: list = []

    async def refund(self, **kwargs):
        rival = threading.Thread(target=self._ship_the_order)
        rival.start()
        self.rival = rival
        await asyncio.sleep(0.2)  # A window for the rival to act, if nothing stops it.
        return await super().refund(**kwargs)

    def _ship_the_order(self):
        try:
            order = Order.objects.get()
            services.change_order_status(order=order, status=Order.Status.SHIPPED)
            self.rival_outcome.append("shipped")
        except services.InvalidTransition as error:
            self.rival_outcome.append(error.message)
        finally:
            connection.close()


@pytest.mark.django_db(transaction=True)
def test_order_cannot_ship_while_its_cancellation_refunds_the_money(shopper, make_product, staff, settings):
    settings.PAYMENT_GATEWAY = "tests.test_services.ShippingDuringRefundBank"
    bank = get_gateway()
    bank.rival_outcome = []
    kettle = make_product(name="Kettle", stock=5)
    services.add_to_cart(cart=cart_of(shopper), product=kettle, quantity=2)
    order = checkout(shopper)

    services.change_order_status(order=order, status=Order.Status.CANCELLED, actor=staff)
    bank.rival.join(timeout=30)

    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert bank.rival_outcome == [f"Order {order.number} is cancelled and cannot be marked shipped."]
    assert len(bank.refunds) == 1
    kettle.refresh_from_db()
    assert kettle.stock == 5

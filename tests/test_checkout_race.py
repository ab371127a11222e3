"""Checkouts racing on PostgreSQL: real threads, real row locks, a bank that takes its time.

Each thread runs the checkout as a request would (async_to_sync around the async service,
its own database connection) and closes its connection at the end.
"""

import re
import secrets
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from shop import payments, services
from shop.models import Order, Payment, Product
from shop.payments import Card
from shop.signals import order_placed
from tests.concurrency import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


@pytest.fixture
def slow_bank(settings):
    """A bank slow enough (50 ms) that the racing checkouts wait for it at the same time."""
    settings.SANDBOX_BANK_LATENCY_MS = 50
    payments.get_gateway.cache_clear()
    return payments.get_gateway()


def checkout_job(user, token):
    return lambda: async_to_sync(services.place_order)(user=user, checkout_token=token, card=CARD)


def test_thirty_shoppers_racing_for_five_units_sell_exactly_five(make_product, make_user, slow_bank):
    kettle = make_product(name="Kettle", price="25.00", stock=5)
    shoppers = [make_user() for _ in range(30)]
    for shopper in shoppers:
        services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=1)

    outcomes = race([checkout_job(shopper, secrets.token_urlsafe(24)) for shopper in shoppers])

    orders = [outcome for outcome in outcomes if isinstance(outcome, Order)]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, services.OutOfStock)]
    assert len(orders) + len(refusals) == 30, [
        outcome for outcome in outcomes if not isinstance(outcome, (Order, services.OutOfStock))
    ]
    assert len(orders) == 5
    assert len(refusals) == 25
    for refusal in refusals:
        assert re.fullmatch(r"Kettle is sold out\.|Only [1-4] left of Kettle\.", refusal.message), refusal.message
    assert Order.objects.filter(status=Order.Status.PAID).count() == 5
    assert Order.objects.count() == 5
    assert Product.objects.get(pk=kettle.pk).stock == 0
    assert Payment.objects.filter(status=Payment.Status.CAPTURED).count() == 5
    assert Payment.objects.count() == 5
    assert len(slow_bank.charges) == 5
    assert sum(charge.amount for charge in slow_bank.charges) == Decimal("125.00")
    winners = {order.user_id for order in orders}
    for shopper in shoppers:
        cart_lines = services.get_cart(user=shopper).lines.count()
        assert cart_lines == (0 if shopper.pk in winners else 1)


def test_ten_submits_of_one_checkout_make_one_order_and_one_charge(make_product, shopper, slow_bank):
    kettle = make_product(name="Kettle", price="25.00", stock=5)
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=2)
    token = secrets.token_urlsafe(24)
    placed = []

    def on_placed(sender, order, **kwargs):
        placed.append(order.pk)

    order_placed.connect(on_placed, weak=False, dispatch_uid="test-race-placed")
    try:
        outcomes = race([checkout_job(shopper, token) for _ in range(10)])
    finally:
        order_placed.disconnect(dispatch_uid="test-race-placed")

    assert all(isinstance(outcome, Order) for outcome in outcomes), outcomes
    order = Order.objects.get()
    assert {outcome.pk for outcome in outcomes} == {order.pk}
    assert order.status == Order.Status.PAID
    assert Payment.objects.get().order == order
    assert len(slow_bank.charges) == 1
    assert placed == [order.pk]
    assert Product.objects.get(pk=kettle.pk).stock == 3


def test_two_sessions_of_one_shopper_paying_one_cart_at_once_pay_once(make_product, shopper, slow_bank):
    kettle = make_product(name="Kettle", price="25.00", stock=5)
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=2)

    # A laptop and a phone: two login sessions, so two checkout tokens, for the same cart.
    outcomes = race([checkout_job(shopper, secrets.token_urlsafe(24)) for _ in range(2)])

    orders = [outcome for outcome in outcomes if isinstance(outcome, Order)]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, services.PaymentInProgress)]
    assert (len(orders), len(refusals)) == (1, 1), outcomes
    assert Order.objects.get().status == Order.Status.PAID
    assert len(slow_bank.charges) == 1
    assert Product.objects.get(pk=kettle.pk).stock == 3


def test_carts_filled_in_opposite_orders_do_not_deadlock(make_product, make_user, slow_bank):
    kettle, mug = make_product(name="Kettle", stock=10), make_product(name="Mug", stock=10)
    shoppers = [make_user() for _ in range(10)]
    for index, shopper in enumerate(shoppers):
        cart = services.get_cart(user=shopper, create=True)
        for product in (kettle, mug) if index % 2 else (mug, kettle):
            services.add_to_cart(cart=cart, product=product, quantity=1)

    outcomes = race([checkout_job(shopper, secrets.token_urlsafe(24)) for shopper in shoppers])

    assert all(isinstance(outcome, Order) for outcome in outcomes), outcomes
    assert list(Product.objects.order_by("name").values_list("stock", flat=True)) == [0, 0]
    assert len(slow_bank.charges) == 10


def test_double_clicked_add_to_cart_adds_both_clicks(make_product, shopper):
    kettle = make_product(name="Kettle", stock=20)
    cart = services.get_cart(user=shopper, create=True)

    outcomes = race([lambda: services.add_to_cart(cart=cart, product=kettle, quantity=2) for _ in range(6)])

    assert not [outcome for outcome in outcomes if isinstance(outcome, BaseException)], outcomes
    assert cart.lines.get().quantity == 12


def test_concurrent_adds_cannot_pass_the_stock_together(make_product, shopper):
    kettle = make_product(name="Kettle", stock=5)
    cart = services.get_cart(user=shopper, create=True)

    outcomes = race([lambda: services.add_to_cart(cart=cart, product=kettle, quantity=2) for _ in range(6)])

    refusals = [outcome for outcome in outcomes if isinstance(outcome, services.OutOfStock)]
    assert len(refusals) == 4, outcomes
    # Each refusal comes once two adds went through, and says so (issue 9).
    expected = "Only 5 left of Kettle. 4 are already in your cart, so you can add 1 more."
    assert all(refusal.message == expected for refusal in refusals), [refusal.message for refusal in refusals]
    assert cart.lines.get().quantity == 4

"""What a checkout costs the server: its SQL statements, and how many checkouts work at once.

The counts are ceilings, not timings: a checkout that starts reading the same rows twice
again (the lines after writing them, the products after locking them, the shopper after
loading the order) fails here. They include what the receivers of the shop's signals write
in the same transactions (the notification, the live cart warning, the staff feed).
"""

import asyncio
import threading
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from shop import payments, services
from shop.models import CartLine, Order, Payment, StockMovement
from shop.payments import Card, ChargeResult
from shop.signals import order_placed
from tests.checkout_data import shipping_fields
from tests.fakes import wait_until

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")

# Transaction 1 with a two-line cart: cart lock, the token's and the shopper's pending orders,
# the lines with their products locked, order, order lines, stock update, stock movements,
# order event, reconciliation task (9), and the live cart warning's query when other carts
# hold the products.
RESERVE_STATEMENTS_AT_MOST = 10
# Transaction 2: the order with its shopper, payment, status, event, the cart's lines and their
# removal (6), then what the order_placed receivers write: the notification (its stream's
# UPDATE ... RETURNING, the row, the email choice, the unread count; 2 more for a shopper's
# first, which starts the stream) and the confirmation email's task.
CAPTURE_STATEMENTS_AT_MOST = 13


@pytest.fixture
def cart_of_two(shopper, make_product):
    cart = services.get_cart(user=shopper, create=True)
    kettle, mug = make_product(name="Kettle", price="25.00"), make_product(name="Mug", price="8.00")
    services.add_to_cart(cart=cart, product=kettle, quantity=2)
    services.add_to_cart(cart=cart, product=mug, quantity=1)
    return kettle, mug


def charge_for(order: Order) -> ChargeResult:
    return ChargeResult(reference="ch_test", amount=order.total, currency=order.currency, card_last4="4242")


@pytest.mark.django_db
def test_a_reservation_reads_its_lines_and_locks_its_products_once(shopper, cart_of_two):
    kettle, mug = cart_of_two
    with CaptureQueriesContext(connection) as queries:
        order = services.reserve_order(user=shopper, checkout_token="cost-reserve")

    # The test runs in a transaction, so reserve_order's own is a savepoint: the only one.
    statements = [query["sql"] for query in queries.captured_queries if "SAVEPOINT" not in query["sql"]]
    assert len(queries.captured_queries) - len(statements) == 2
    assert len(statements) <= RESERVE_STATEMENTS_AT_MOST, "\n".join(statements)
    assert order.total == Decimal("58.00")
    kettle.refresh_from_db()
    mug.refresh_from_db()
    assert (kettle.stock, mug.stock) == (8, 9)
    assert sorted(StockMovement.objects.filter(order=order).values_list("delta", "stock_after")) == [(-2, 8), (-1, 9)]


@pytest.mark.django_db
def test_a_capture_loads_the_order_with_its_shopper_and_empties_the_cart_in_one_delete(shopper, cart_of_two):
    order = services.reserve_order(user=shopper, checkout_token="cost-capture")
    with CaptureQueriesContext(connection) as queries:
        paid = services.capture_payment(order_id=order.pk, charge=charge_for(order))

    statements = [query["sql"] for query in queries.captured_queries][1:-1]  # The test's own savepoint.
    assert len(statements) <= CAPTURE_STATEMENTS_AT_MOST, "\n".join(statements)
    assert not [sql for sql in statements if 'FROM "auth_user"' in sql and "JOIN" not in sql]
    assert len([sql for sql in statements if sql.startswith('DELETE FROM "shop_cartline"')]) == 1
    assert paid.status == Order.Status.PAID
    assert Payment.objects.get(order=order).status == Payment.Status.CAPTURED
    assert not CartLine.objects.filter(cart__user=shopper).exists()


@pytest.mark.django_db
def test_a_repeated_capture_records_nothing_twice(shopper, cart_of_two):
    order = services.reserve_order(user=shopper, checkout_token="cost-twice")
    services.capture_payment(order_id=order.pk, charge=charge_for(order))
    again = services.capture_payment(order_id=order.pk, charge=charge_for(order))

    assert again.status == Order.Status.PAID
    assert Payment.objects.filter(order=order).count() == 1
    assert order.events.count() == 2


# A storm of checkouts takes turns for its database work, not for the bank -------------------


def shoppers_with_a_cart(make_user, product, count: int) -> list:
    shoppers = [make_user() for _ in range(count)]
    for shopper in shoppers:
        services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=1)
    return shoppers


async def pay_as_a_request(shopper, token: str) -> Order:
    # As the ASGI handler runs each request: its sync work in a thread of its own.
    async with ThreadSensitiveContext():
        return await services.place_order(user=shopper, checkout_token=token, card=CARD)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections")
async def test_checkouts_taking_turns_one_at_a_time_still_wait_for_the_bank_together(
    settings, make_user, make_product, monkeypatch
):
    settings.CHECKOUT_CONCURRENCY = 1
    product = await sync_to_async(make_product)(stock=10)
    shoppers = await sync_to_async(shoppers_with_a_cart)(make_user, product, 4)
    at_the_bank, bank_answers = [], asyncio.Event()
    real_charge = payments.SandboxBank.charge

    async def held_charge(self, **kwargs):
        at_the_bank.append(kwargs["idempotency_key"])
        await bank_answers.wait()
        return await real_charge(self, **kwargs)

    monkeypatch.setattr(payments.SandboxBank, "charge", held_charge)

    checkouts = [asyncio.ensure_future(pay_as_a_request(shopper, f"turns-{shopper.pk}")) for shopper in shoppers]
    # With the one turn held through the bank's answer, a single checkout would ever get here.
    await wait_until(lambda: len(at_the_bank) == len(shoppers), timeout=30)
    pending = await sync_to_async(lambda: set(Order.objects.values_list("status", flat=True)))()
    bank_answers.set()
    orders = await asyncio.gather(*checkouts)

    assert pending == {Order.Status.PENDING}  # All four reserved, none captured, all at the bank at once.
    assert [order.status for order in orders] == [Order.Status.PAID] * len(shoppers)
    product = await product.__class__.objects.aget(pk=product.pk)
    assert product.stock == 10 - len(shoppers)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections")
async def test_no_more_checkouts_than_checkout_concurrency_do_their_database_work_at_once(
    settings, make_user, make_product
):
    # PostgreSQL: its row locks let captures of different orders run side by side (SQLite's
    # single writer would serialise them whatever the bound).
    settings.CHECKOUT_CONCURRENCY = 2
    product = await sync_to_async(make_product)(stock=10)
    shoppers = await sync_to_async(shoppers_with_a_cart)(make_user, product, 6)
    inside, most_inside, lock = [0], [0], threading.Lock()
    let_go = threading.Event()

    def capture_in_progress(sender, order, **kwargs):
        # In capture_payment's transaction, in that checkout's own thread: stay a while.
        with lock:
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
        let_go.wait(timeout=0.5)
        with lock:
            inside[0] -= 1

    order_placed.connect(capture_in_progress, dispatch_uid="test-capture-in-progress")
    try:
        checkouts = [pay_as_a_request(shopper, f"bound-{shopper.pk}") for shopper in shoppers]
        orders = await asyncio.gather(*checkouts)
    finally:
        let_go.set()
        order_placed.disconnect(dispatch_uid="test-capture-in-progress")

    assert [order.status for order in orders] == [Order.Status.PAID] * len(shoppers)
    assert 1 <= most_inside[0] <= 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections")
async def test_checkouts_waiting_for_a_turn_hold_no_database_connection(settings, make_user, make_product):
    settings.CHECKOUT_CONCURRENCY = 1
    product = await sync_to_async(make_product)(stock=10)
    holder, *queued = await sync_to_async(shoppers_with_a_cart)(make_user, product, 5)
    holding, let_go, read_the_session = threading.Event(), threading.Event(), []

    def hold_the_turn(sender, order, **kwargs):
        if order.user_id == holder.pk:
            holding.set()
            let_go.wait(timeout=60)

    async def pay_after_reading_the_session(shopper) -> Order:
        async with ThreadSensitiveContext():
            # As the view does (session, user): the request's thread now has a connection open.
            await sync_to_async(lambda: list(type(shopper).objects.filter(pk=shopper.pk)))()
            read_the_session.append(shopper.pk)
            return await services.place_order(user=shopper, checkout_token=f"queued-{shopper.pk}", card=CARD)

    def other_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    order_placed.connect(hold_the_turn, dispatch_uid="test-hold-the-turn")
    try:
        first = asyncio.ensure_future(pay_as_a_request(holder, "holder"))
        await wait_until(holding.is_set, timeout=30)
        others = [asyncio.ensure_future(pay_after_reading_the_session(shopper)) for shopper in queued]
        await wait_until(lambda: len(read_the_session) == len(queued), timeout=30)
        # The holder's capture has one; the four queued checkouts gave theirs back (one each before).
        connections_while_queued = [await sync_to_async(other_connections)()]
        for _ in range(200):  # Some seconds on a loaded machine; at once, usually.
            if connections_while_queued[-1] <= 2:
                break
            await asyncio.sleep(0.05)
            connections_while_queued.append(await sync_to_async(other_connections)())
    finally:
        let_go.set()
        order_placed.disconnect(dispatch_uid="test-hold-the-turn")
    orders = await asyncio.gather(first, *others)

    assert connections_while_queued[-1] <= 2, connections_while_queued
    assert [order.status for order in orders] == [Order.Status.PAID] * 5


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_checkout_reads_the_shopper_once(client, shopper, cart_of_two, method):
    client.force_login(shopper)
    page = client.get("/checkout/")
    token = page.context["checkout_token"]
    with CaptureQueriesContext(connection) as queries:
        if method == "GET":
            response = client.get("/checkout/")
        else:
            response = client.post(
                "/checkout/",
                {
                    **shipping_fields(email=shopper.email),
                    "number": "4242 4242 4242 4242",
                    "expiry": f"12/{(date.today().year + 1) % 100:02d}",
                    "cvc": "123",
                    "checkout_token": token,
                },
            )

    assert response.status_code == (200 if method == "GET" else 302)
    reads = [query["sql"] for query in queries.captured_queries if query["sql"].startswith("SELECT")]
    assert len([sql for sql in reads if 'FROM "auth_user"' in sql and "FOR UPDATE" not in sql]) == 1

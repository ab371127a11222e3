"""The checkout's promises under retries, other windows, slow banks and crashes.

One cart pays once, for the amount on the page the shopper submitted; a slow bank leaves
the order PENDING (never "failed", never "paid" by guess) and it settles by itself; a
PENDING order left behind is settled by reconciliation from the bank's own answer.
"""

import asyncio
import re
from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient
from django.utils import timezone

from notifications.models import Notification
from shop import payments, services
from shop.models import Order, Payment
from shop.payments import Card
from tests.checkout_data import shipping_fields

NEXT_YY = f"{(date.today().year + 1) % 100:02d}"
APPROVED = "4242 4242 4242 4242"
CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def mug(make_product):
    return make_product(name="Mug", price="8.00", stock=10)


@pytest.fixture
def shopper_client(client, shopper):
    client.force_login(shopper)
    return client


def fill_cart(user, product, quantity=1):
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=product, quantity=quantity)


def checkout_page(client):
    response = client.get("/checkout/")
    assert response.status_code == 200
    return response.content.decode(), re.search(r'name="checkout_token" value="([^"]+)"', response.content.decode())[1]


def pay(client, token):
    return client.post(
        "/checkout/",
        {**shipping_fields(), "number": APPROVED, "expiry": f"12/{NEXT_YY}", "cvc": "123", "checkout_token": token},
    )


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


# One cart pays once ----------------------------------------------------------------------


def test_a_second_session_cannot_pay_a_cart_that_is_being_paid(shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    # The first window's payment is under way (its order reserved, the bank not yet answered).
    first = services.reserve_order(user=shopper, checkout_token="window-one")

    with pytest.raises(services.PaymentInProgress, match=first.number):
        async_to_sync(services.place_order)(user=shopper, checkout_token="window-two", card=CARD)

    assert Order.objects.count() == 1
    assert bank.charges == []
    kettle.refresh_from_db()
    assert kettle.stock == 8  # Taken once.


def test_checkout_page_says_a_payment_is_in_progress_and_disables_pay(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    pending = services.reserve_order(user=shopper, checkout_token="other-device")

    page, _ = checkout_page(shopper_client)

    assert f"order {pending.number}" in page
    assert re.search(r'<button type="submit" class="button primary large"[^>]* disabled>', page)


def test_a_pending_order_left_behind_is_not_charged_for_the_changed_cart(shopper_client, shopper, kettle, mug, bank):
    fill_cart(shopper, kettle)
    _, old_token = checkout_page(shopper_client)
    # The process died while the bank was answering: the order stays PENDING under the old token.
    leftover = services.reserve_order(user=shopper, checkout_token=old_token)
    fill_cart(shopper, mug)

    page, new_token = checkout_page(shopper_client)
    response = pay(shopper_client, new_token)

    assert "€33.00" in page
    assert new_token != old_token  # The page for the new cart is a new checkout.
    assert response.status_code == 302 and response.url == "/checkout/"
    assert bank.charges == []  # Not the old 25.00 for a page that showed 33.00, not anything.
    leftover.refresh_from_db()
    assert leftover.status == Order.Status.PENDING


def test_a_cart_changed_after_the_page_was_shown_is_not_charged(shopper_client, shopper, kettle, mug, bank):
    fill_cart(shopper, kettle)
    _, token = checkout_page(shopper_client)  # Shows 25.00.
    fill_cart(shopper, mug)  # Another tab adds a mug: the cart is now 33.00.

    response = pay(shopper_client, token)

    assert response.status_code == 409
    assert "Your cart changed since this page was shown" in response.content.decode()
    assert bank.charges == []
    assert Order.objects.count() == 0


def test_the_amount_charged_is_the_amount_on_the_submitted_page(shopper_client, shopper, kettle, mug, bank):
    fill_cart(shopper, kettle)
    fill_cart(shopper, mug)
    page, token = checkout_page(shopper_client)

    response = pay(shopper_client, token)

    assert response.status_code == 302
    assert "Pay €33.00" in page
    assert [charge.amount for charge in bank.charges] == [Decimal("33.00")]


def test_a_line_sold_out_since_it_was_added_is_shown_and_pay_is_disabled(shopper_client, shopper, kettle, mug):
    fill_cart(shopper, kettle, 3)
    fill_cart(shopper, mug)
    kettle.__class__.objects.filter(pk=kettle.pk).update(stock=1)

    page, _ = checkout_page(shopper_client)

    assert "Only 1 left of Kettle." in page
    assert 'class="has-problem"' in page
    assert re.search(r'<button type="submit" class="button primary large"[^>]* disabled>', page)


def test_units_added_to_the_cart_while_the_bank_answers_stay_in_the_cart(shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    order = services.reserve_order(user=shopper, checkout_token="paying")
    fill_cart(shopper, kettle, 1)  # Another tab, while the bank thinks.

    charge = async_to_sync(bank.charge)(
        amount=order.total, currency="EUR", card=CARD, idempotency_key=services.checkout_idempotency_key("paying")
    )
    services.capture_payment(order_id=order.pk, charge=charge)

    cart = services.get_cart(user=shopper)
    assert [(line.product, line.quantity) for line in cart.lines.all()] == [(kettle, 1)]


# A slow bank ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections")
async def test_a_bank_slower_than_the_timeout_leaves_the_order_pending_then_it_settles(settings, shopper, kettle):
    # The shopper waits 1 s; the bank answers after 1.5 s, well within the background's
    # as-long-again (2 s), even on a loaded machine.
    settings.PAYMENT_TIMEOUT = 1.0
    settings.SANDBOX_BANK_LATENCY_MS = 1500
    payments.get_gateway.cache_clear()
    await sync_to_async(fill_cart)(shopper, kettle)
    client = AsyncClient()
    await sync_to_async(client.force_login)(shopper)
    page = await client.get("/checkout/")
    token = re.search(r'name="checkout_token" value="([^"]+)"', page.content.decode())[1]

    response = await client.post(
        "/checkout/",
        {**shipping_fields(), "number": APPROVED, "expiry": f"12/{NEXT_YY}", "cvc": "123", "checkout_token": token},
    )

    order = await Order.objects.aget(checkout_token=token)
    assert response.status_code == 302 and response.url == order.get_absolute_url()
    assert order.status == Order.Status.PENDING  # Not "failed", not "paid".
    order_page = (await client.get(response.url)).content.decode()
    assert "is being confirmed with the bank" in order_page
    assert "Your payment is being confirmed" in order_page

    async def paid():
        while (await Order.objects.aget(pk=order.pk)).status != Order.Status.PAID:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(paid(), timeout=10)
    assert await Payment.objects.filter(order=order, status=Payment.Status.CAPTURED).acount() == 1
    assert await Notification.objects.filter(kind=Notification.Kind.ORDER_PLACED).acount() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections")
async def test_the_bank_wait_holds_no_database_connection(shopper, kettle, monkeypatch):
    await sync_to_async(fill_cart)(shopper, kettle)
    seen_during_the_wait = []
    real_charge = payments.SandboxBank.charge

    async def observing_charge(self, **kwargs):
        # The same thread the checkout's transactions ran in: is its connection still open?
        seen_during_the_wait.append(await sync_to_async(lambda: connection.connection is not None)())
        return await real_charge(self, **kwargs)

    monkeypatch.setattr(payments.SandboxBank, "charge", observing_charge)

    order = await services.place_order(user=shopper, checkout_token="no-connection-held", card=CARD)

    assert order.status == Order.Status.PAID
    assert seen_during_the_wait == [False]


# Reconciliation -------------------------------------------------------------------------------


def leave_pending(user, product, token, *, minutes_ago=10) -> Order:
    fill_cart(user, product)
    order = services.reserve_order(user=user, checkout_token=token)
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return order


def reconcile(**options) -> str:
    out = StringIO()
    call_command("reconcile_payments", stdout=out, **options)
    return out.getvalue()


def test_reconciliation_marks_paid_an_order_the_bank_charged(shopper, kettle, bank, django_capture_on_commit_callbacks):
    order = leave_pending(shopper, kettle, "crashed-after-charge")
    # The bank took the money; the shop never heard (a crash, a timeout).
    async_to_sync(bank.charge)(
        amount=order.total,
        currency="EUR",
        card=CARD,
        idempotency_key=services.checkout_idempotency_key("crashed-after-charge"),
    )

    with django_capture_on_commit_callbacks(execute=True):
        output = reconcile(older_than=60)
    again = reconcile(older_than=60)

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.payments.get().status == Payment.Status.CAPTURED
    assert Notification.objects.filter(recipient=shopper, kind=Notification.Kind.ORDER_PLACED).count() == 1
    assert len(bank.charges) == 1
    assert "1 paid" in output
    assert "0 paid, 0 released" in again


def test_reconciliation_releases_an_order_the_bank_never_charged(shopper, kettle, bank):
    order = leave_pending(shopper, kettle, "crashed-before-charge")

    output = reconcile(older_than=60)
    reconcile(older_than=60)

    order.refresh_from_db()
    kettle.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert kettle.stock == 10
    assert bank.charges == []
    assert "1 released" in output
    told = Notification.objects.get(recipient=shopper)
    assert (told.kind, told.title) == (Notification.Kind.ORDER_CANCELLED, f"Order {order.number} was not paid")
    assert "nothing was charged" in told.body
    # A charge arriving now (a retry of that checkout) cannot move money any more.
    with pytest.raises(payments.PaymentDeclined):
        async_to_sync(bank.charge)(
            amount=order.total,
            currency="EUR",
            card=CARD,
            idempotency_key=services.checkout_idempotency_key("crashed-before-charge"),
        )


def test_reconciliation_leaves_recent_pending_orders_alone(shopper, kettle, bank):
    order = leave_pending(shopper, kettle, "still-paying", minutes_ago=0)

    output = reconcile(older_than=60)

    order.refresh_from_db()
    assert order.status == Order.Status.PENDING
    assert "0 paid, 0 released" in output


def test_reconcile_refuses_a_negative_age(shopper):
    with pytest.raises(Exception, match="older-than"):
        reconcile(older_than=-1)


# Bad input -------------------------------------------------------------------------------------


def test_add_to_cart_with_a_next_that_is_not_a_path_redirects_to_the_cart(client, kettle):
    response = client.post("/cart/add/", {"product": kettle.pk, "quantity": 1, "next": "foo"})

    assert response.status_code == 302
    assert response.url == "/cart/"


@pytest.mark.parametrize("path", ["/orders/%00/", "/orders/ab%00cd/", "/orders/" + "A" * 200 + "/"])
def test_an_order_number_with_odd_characters_is_a_404(shopper_client, path):
    assert shopper_client.get(path).status_code == 404


def test_an_order_number_typed_in_lower_case_finds_the_order(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle)
    order = async_to_sync(services.place_order)(user=shopper, checkout_token="lower", card=CARD)

    assert shopper_client.get(f"/orders/{order.number.lower()}/").status_code == 200


# The task worker reconciles by itself --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_reservation_schedules_its_own_reconciliation_in_its_transaction(shopper, kettle, bank, settings):
    from django_tasks_db.models import DBTaskResult

    from tests.worker import run_worker

    settings.PAYMENT_RECONCILE_AFTER = 60
    fill_cart(shopper, kettle)
    order = services.reserve_order(user=shopper, checkout_token="crash-right-after")  # ...and the process dies.
    scheduled = DBTaskResult.objects.get(task_path="shop.tasks.reconcile_stale_payments")
    assert scheduled.run_after > timezone.now() + timedelta(seconds=59)

    run_worker()  # Not due yet: the payment may still be answered.
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING

    # An hour later (as far as the order and the task are concerned), the worker settles it.
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(hours=1))
    DBTaskResult.objects.filter(pk=scheduled.pk).update(run_after=timezone.now() - timedelta(seconds=1))
    run_worker()

    order.refresh_from_db()
    kettle.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert kettle.stock == 10
    assert bank.charges == []


def test_a_rolled_back_reservation_schedules_nothing(shopper, kettle):
    from django_tasks_db.models import DBTaskResult

    fill_cart(shopper, kettle)
    kettle.__class__.objects.filter(pk=kettle.pk).update(stock=0)

    with pytest.raises(services.OutOfStock):
        services.reserve_order(user=shopper, checkout_token="sold-out")

    assert not DBTaskResult.objects.exists()

"""Staff work in the Django admin: every status change goes through the services."""

import secrets
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from shop import services
from shop.models import Order, OrderEvent, Payment, Product
from shop.payments import Card, PaymentDeclined

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")
DECLINED = Card(number="4000000000000002", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def place(shopper, kettle):
    def place(quantity: int = 2) -> Order:
        services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=quantity)
        return async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    return place


def run_action(client, action: str, *orders: Order):
    return client.post(
        "/admin/shop/order/", {"action": action, "_selected_action": [order.pk for order in orders]}, follow=True
    )


def notes(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def statuses(*orders: Order) -> list[str]:
    return [Order.objects.get(pk=order.pk).status for order in orders]


def change_form_data(client, url: str) -> dict:
    """The data the order change form would post as loaded (inline management forms included)."""
    response = client.get(url)
    assert response.status_code == 200
    data = {}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for field in formset.management_form:
            data[field.html_name] = field.value()
        for form in formset.forms:
            for field in form:
                if field.value() is not None:
                    data[field.html_name] = field.value()
    return data


# Pages --------------------------------------------------------------------------------


def test_staff_can_load_every_changelist_and_change_page(staff_client, staff, shopper, place, kettle):
    order = place()
    payment = Payment.objects.get()
    pages = [
        "/admin/",
        "/admin/shop/product/",
        f"/admin/shop/product/{kettle.pk}/change/",
        "/admin/shop/product/add/",
        "/admin/shop/order/",
        f"/admin/shop/order/{order.pk}/change/",
        "/admin/shop/payment/",
        f"/admin/shop/payment/{payment.pk}/change/",
        "/admin/auth/user/",
        f"/admin/auth/user/{shopper.pk}/change/",
        "/admin/shop/order/?status__exact=paid",
        f"/admin/shop/order/?q={order.number}",
    ]
    for url in pages:
        response = staff_client.get(url)
        assert response.status_code == 200, url
    page = staff_client.get(f"/admin/shop/order/{order.pk}/change/").content.decode()
    assert order.number in page and "Kettle" in page
    assert "Payment " in page and "captured." in page


def test_non_staff_cannot_open_the_admin(client, shopper):
    client.force_login(shopper)
    response = client.get("/admin/shop/order/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_orders_cannot_be_added_or_deleted_in_the_admin(staff_client, place):
    order = place()
    assert staff_client.get("/admin/shop/order/add/").status_code == 403
    assert staff_client.post(f"/admin/shop/order/{order.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Order.objects.filter(pk=order.pk).exists()


def test_staff_edit_price_and_correct_stock_from_the_product_page(staff_client, kettle):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    response = staff_client.post(
        url,
        {
            **change_form_data(staff_client, url),
            **{"name": "Kettle", "slug": kettle.slug, "description": "", "price": "26.00", "is_active": "on"},
            **{"stock_change": "-7", "stock_reason": "correction", "stock_note": "Counted 3"},
        },
    )
    assert response.status_code == 302
    kettle.refresh_from_db()
    assert (kettle.price, kettle.stock) == (Decimal("26.00"), 3)


def test_removing_more_units_than_in_stock_is_a_form_error(staff_client, kettle):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    response = staff_client.post(
        url,
        {
            **change_form_data(staff_client, url),
            **{"name": "Kettle", "slug": kettle.slug, "description": "", "price": "25.00", "is_active": "on"},
            **{"stock_change": "-11", "stock_reason": "written_off"},
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["stock_change"] == [
        "Cannot remove 11 units of Kettle: only 10 in stock."
    ]
    assert Product.objects.get(pk=kettle.pk).stock == 10


# Payments are read-only ----------------------------------------------------------------


def test_payments_are_read_only(staff_client, place, shopper):
    place()
    services.add_to_cart(cart=services.get_cart(user=shopper), product=Product.objects.get(), quantity=1)
    with pytest.raises(PaymentDeclined):
        async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=DECLINED)
    payment = Payment.objects.get(status=Payment.Status.CAPTURED)
    url = f"/admin/shop/payment/{payment.pk}/change/"

    page = staff_client.get(url).content.decode()
    assert 'name="amount"' not in page and 'name="status"' not in page
    assert 'name="_save"' not in page

    response = staff_client.post(url, {"status": "refunded", "amount": "0"})
    assert response.status_code == 403
    assert staff_client.get("/admin/shop/payment/add/").status_code == 403
    assert staff_client.post(f"/admin/shop/payment/{payment.pk}/delete/", {"post": "yes"}).status_code == 403
    payment.refresh_from_db()
    assert (payment.status, payment.amount) == (Payment.Status.CAPTURED, Decimal("50.00"))
    declined = Payment.objects.get(status=Payment.Status.DECLINED)
    assert staff_client.get(f"/admin/shop/payment/{declined.pk}/change/").status_code == 200


# Bulk actions ---------------------------------------------------------------------------


def test_mark_shipped_then_delivered_records_the_staff_member(staff_client, staff, place):
    first, second = place(), place()

    response = run_action(staff_client, "mark_shipped", first, second)

    assert response.status_code == 200
    assert notes(response) == ["2 order(s) marked shipped."]
    assert statuses(first, second) == [Order.Status.SHIPPED, Order.Status.SHIPPED]

    response = run_action(staff_client, "mark_delivered", first)

    assert notes(response) == ["1 order(s) marked delivered."]
    assert statuses(first, second) == [Order.Status.DELIVERED, Order.Status.SHIPPED]
    events = OrderEvent.objects.filter(order=first, actor=staff)
    assert [(event.from_status, event.to_status) for event in events] == [
        (Order.Status.PAID, Order.Status.SHIPPED),
        (Order.Status.SHIPPED, Order.Status.DELIVERED),
    ]


def test_cancel_action_returns_stock_and_money(staff_client, staff, place, kettle, bank):
    order = place(3)
    assert Product.objects.get(pk=kettle.pk).stock == 7

    response = run_action(staff_client, "mark_cancelled", order)

    assert notes(response) == ["1 order(s) marked cancelled."]
    assert statuses(order) == [Order.Status.CANCELLED]
    assert Product.objects.get(pk=kettle.pk).stock == 10
    assert len(bank.refunds) == 1
    assert Payment.objects.filter(order=order, kind=Payment.Kind.REFUND, status=Payment.Status.REFUNDED).count() == 1
    assert OrderEvent.objects.filter(order=order, to_status=Order.Status.CANCELLED, actor=staff).exists()


def test_refund_action_on_a_shipped_order_returns_money_only(staff_client, place, kettle, bank):
    order = place(2)
    run_action(staff_client, "mark_shipped", order)

    response = run_action(staff_client, "mark_refunded", order)

    assert notes(response) == ["1 order(s) marked refunded."]
    assert statuses(order) == [Order.Status.REFUNDED]
    assert Product.objects.get(pk=kettle.pk).stock == 8
    assert len(bank.refunds) == 1


def test_illegal_action_shows_an_error_and_changes_nothing(staff_client, place, kettle, bank):
    order = place()
    events_before = order.events.count()

    response = run_action(staff_client, "mark_delivered", order)

    assert notes(response) == [f"Order {order.number} is paid and cannot be marked delivered."]
    assert [message.level_tag for message in response.context["messages"]] == ["error"]
    assert statuses(order) == [Order.Status.PAID]
    assert order.events.count() == events_before


def test_cancelling_twice_is_refused_without_a_second_refund(staff_client, place, kettle, bank):
    order = place()
    run_action(staff_client, "mark_cancelled", order)

    response = run_action(staff_client, "mark_cancelled", order)

    assert notes(response) == [f"Order {order.number} is cancelled and cannot be marked cancelled."]
    assert len(bank.refunds) == 1
    assert Product.objects.get(pk=kettle.pk).stock == 10


def test_mixed_selection_changes_the_legal_ones_and_reports_the_others(staff_client, place):
    paid, delivered = place(), place()
    run_action(staff_client, "mark_shipped", delivered)
    run_action(staff_client, "mark_delivered", delivered)

    response = run_action(staff_client, "mark_shipped", paid, delivered)

    assert statuses(paid, delivered) == [Order.Status.SHIPPED, Order.Status.DELIVERED]
    assert sorted(notes(response)) == sorted(
        [f"Order {delivered.number} is delivered and cannot be marked shipped.", "1 order(s) marked shipped."]
    )


# The change form ------------------------------------------------------------------------


def test_change_form_offers_only_allowed_statuses(staff_client, place):
    order = place()
    response = staff_client.get(f"/admin/shop/order/{order.pk}/change/")
    choices = [value for value, _ in response.context["adminform"].form.fields["status"].choices]
    assert sorted(choices) == sorted(
        [Order.Status.PAID, Order.Status.SHIPPED, Order.Status.CANCELLED, Order.Status.REFUNDED]
    )


def test_change_form_moves_the_order_through_the_service(staff_client, staff, place, kettle, bank):
    order = place(2)
    url = f"/admin/shop/order/{order.pk}/change/"
    data = change_form_data(staff_client, url)

    response = staff_client.post(url, {**data, "status": Order.Status.CANCELLED})

    assert response.status_code == 302
    assert statuses(order) == [Order.Status.CANCELLED]
    assert Product.objects.get(pk=kettle.pk).stock == 10
    assert len(bank.refunds) == 1
    event = Order.objects.get(pk=order.pk).events.last()
    assert (event.from_status, event.to_status, event.actor) == (Order.Status.PAID, Order.Status.CANCELLED, staff)


def test_change_form_ships_an_order(staff_client, staff, place):
    order = place()
    url = f"/admin/shop/order/{order.pk}/change/"
    response = staff_client.post(url, {**change_form_data(staff_client, url), "status": Order.Status.SHIPPED})
    assert response.status_code == 302
    assert statuses(order) == [Order.Status.SHIPPED]
    assert OrderEvent.objects.filter(order=order, to_status=Order.Status.SHIPPED, actor=staff).count() == 1


def test_saving_the_change_form_unchanged_records_nothing(staff_client, place):
    order = place()
    url = f"/admin/shop/order/{order.pk}/change/"
    events_before = order.events.count()
    response = staff_client.post(url, {**change_form_data(staff_client, url), "status": Order.Status.PAID})
    assert response.status_code == 302
    assert statuses(order) == [Order.Status.PAID]
    assert order.events.count() == events_before


@pytest.mark.parametrize("status", [Order.Status.DELIVERED, Order.Status.PENDING, "lost"])
def test_change_form_refuses_a_disallowed_status(staff_client, place, bank, status):
    order = place()
    url = f"/admin/shop/order/{order.pk}/change/"
    events_before = order.events.count()

    response = staff_client.post(url, {**change_form_data(staff_client, url), "status": status})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["status"]
    assert errors and "Select a valid choice" in errors[0]
    assert statuses(order) == [Order.Status.PAID]
    assert order.events.count() == events_before
    assert bank.refunds == []


def test_change_form_refuses_a_move_made_stale_by_another_change(staff, place):
    """The page was opened while the order was PAID; meanwhile it shipped; cancelling is now refused."""
    from shop.admin import OrderAdminForm

    order = place()
    form = OrderAdminForm(instance=Order.objects.get(pk=order.pk), data={"status": Order.Status.CANCELLED})
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)
    form.instance.refresh_from_db()

    assert not form.is_valid()
    assert form.errors["status"] == [f"Order {order.number} is shipped and cannot be marked cancelled."]


def test_change_form_posted_after_another_change_is_refused(staff_client, staff, place, bank):
    order = place()
    url = f"/admin/shop/order/{order.pk}/change/"
    data = change_form_data(staff_client, url)
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)

    response = staff_client.post(url, {**data, "status": Order.Status.CANCELLED})

    assert response.status_code == 200
    assert "Select a valid choice" in response.context["adminform"].form.errors["status"][0]
    assert statuses(order) == [Order.Status.SHIPPED]
    assert bank.refunds == []


def test_a_customers_page_lists_their_orders_read_only(staff_client, shopper, other_shopper, place):
    order = place()

    page = staff_client.get(f"/admin/auth/user/{shopper.pk}/change/")
    other_page = staff_client.get(f"/admin/auth/user/{other_shopper.pk}/change/")

    assert page.status_code == 200
    assert order.number in page.content.decode()
    assert f"/admin/shop/order/{order.pk}/change/" in page.content.decode()
    assert order.number not in other_page.content.decode()


def test_saving_a_customers_page_keeps_their_orders(staff_client, shopper, place):
    order = place()
    url = f"/admin/auth/user/{shopper.pk}/change/"
    data = change_form_data(staff_client, url)
    data.update(
        username=shopper.username,
        email="alice@new.example",
        date_joined_0=shopper.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=shopper.date_joined.strftime("%H:%M:%S"),
        is_active="on",
    )

    response = staff_client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    shopper.refresh_from_db()
    assert shopper.email == "alice@new.example"
    assert Order.objects.get(pk=order.pk).user == shopper

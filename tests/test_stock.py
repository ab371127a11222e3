"""Stock moves only through the stock services, each move recorded; staff edits never undo a sale."""

import secrets
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext

from shop import payments, services
from shop.models import Order, OrderLine, Product, StockMovement
from shop.payments import Card, PaymentDeclined
from tests.concurrency import race

CARD = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def buy(shopper):
    def buy(product: Product, quantity: int) -> Order:
        services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=quantity)
        return async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    return buy


def stock_of(product: Product) -> int:
    return Product.objects.values_list("stock", flat=True).get(pk=product.pk)


def changelist_data(client) -> dict:
    """What the product changelist posts when saved as loaded (its list_editable formset)."""
    response = client.get("/admin/shop/product/")
    assert response.status_code == 200
    formset = response.context["cl"].formset
    data = {field.html_name: field.value() for field in formset.management_form}
    for form in formset.forms:
        for field in form:
            value = field.value()
            if value is True:
                data[field.html_name] = "on"
            elif value not in (None, False):
                data[field.html_name] = value
    return {**data, "_save": "Save"}


def change_form_data(client, url: str) -> dict:
    """What the product change form posts when saved as loaded (inline management forms included)."""
    response = client.get(url)
    assert response.status_code == 200
    data = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        data.update({field.html_name: field.value() for field in inline.formset.management_form})
        forms.extend(inline.formset.forms)
    for form in forms:
        for field in form:
            value = field.value()
            if value is True:
                data[field.html_name] = "on"
            elif value not in (None, False, ""):  # "": also an empty file field (no photo), which posts nothing.
                data[field.html_name] = value
    return data


# A stale save never writes stock back ------------------------------------------------------


def test_changelist_saved_after_a_sale_keeps_the_sold_units_sold(staff_client, kettle, buy):
    data = changelist_data(staff_client)  # The page was loaded with 10 in stock...
    buy(kettle, 3)  # ...then a shopper bought 3.
    data.update({"form-0-price": "26.00", "form-0-stock": "10"})  # A stale page still says 10.

    response = staff_client.post("/admin/shop/product/", data)

    assert response.status_code == 302
    kettle.refresh_from_db()
    assert (str(kettle.price), kettle.stock) == ("26.00", 7)


def test_change_form_saved_after_a_sale_keeps_the_sold_units_sold(staff_client, kettle, buy):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    data = change_form_data(staff_client, url)
    buy(kettle, 3)

    response = staff_client.post(url, {**data, "description": "Now with a lid.", "stock": "10"})

    assert response.status_code == 302
    kettle.refresh_from_db()
    assert (kettle.description, kettle.stock) == ("Now with a lid.", 7)


def test_saving_a_stale_product_instance_leaves_stock_alone(kettle, buy):
    stale = Product.objects.get(pk=kettle.pk)
    buy(kettle, 3)

    stale.price = "30.00"
    stale.save()

    kettle.refresh_from_db()
    assert (str(kettle.price), kettle.stock) == ("30.00", 7)


def test_saving_a_product_with_stock_in_update_fields_is_refused(kettle):
    kettle.stock = 99
    with pytest.raises(ValueError, match="only through shop.services.stock"):
        kettle.save(update_fields=["price", "stock"])
    assert stock_of(kettle) == 10


def test_saving_a_partly_loaded_product_saves_what_was_loaded_and_never_stock(kettle, buy):
    partial = Product.objects.only("pk", "name", "stock").get(pk=kettle.pk)
    buy(kettle, 3)

    partial.name = "Gooseneck Kettle"
    partial.save()

    assert Product.objects.values_list("name", "price", "stock").get(pk=kettle.pk) == (
        "Gooseneck Kettle",
        Decimal("25.00"),
        7,
    )


def test_a_new_product_is_created_with_its_initial_stock(make_product):
    product = make_product(name="Mug", stock=4)
    product.name = "Big Mug"
    product.save()  # The same instance, saved again: an UPDATE, which leaves stock alone.
    assert Product.objects.values_list("name", "stock").get(pk=product.pk) == ("Big Mug", 4)


# The services --------------------------------------------------------------------------------


def movements_of(product: Product) -> list[tuple]:
    """(reason, delta, stock_after, order number or None, note) oldest first."""
    return [
        (movement.reason, movement.delta, movement.stock_after, movement.order and movement.order.number, movement.note)
        for movement in StockMovement.objects.filter(product=product).order_by("pk").select_related("order")
    ]


def test_receiving_stock_adds_units_and_records_who_and_why(kettle, staff):
    movement = services.receive_stock(product=kettle, quantity=5, actor=staff, note="Delivery 1234")

    assert stock_of(kettle) == 15
    assert kettle.stock == 15  # The caller's instance is not left stale.
    assert (movement.reason, movement.delta, movement.stock_after) == ("received", 5, 15)
    assert (movement.actor, movement.note, movement.order) == (staff, "Delivery 1234", None)
    assert movements_of(kettle) == [("received", 5, 15, None, "Delivery 1234")]


def test_writing_off_stock_removes_units_as_a_negative_movement(kettle, staff):
    services.write_off_stock(product=kettle, quantity=2, actor=staff, note="Dropped")

    assert stock_of(kettle) == 8
    assert movements_of(kettle) == [("written_off", -2, 8, None, "Dropped")]


def test_a_count_correction_moves_stock_either_way(kettle, staff):
    services.correct_stock(product=kettle, delta=-3, actor=staff, note="Counted 7")
    services.correct_stock(product=kettle, delta=1, actor=staff, note="Found one")

    assert stock_of(kettle) == 8
    assert movements_of(kettle) == [("correction", -3, 7, None, "Counted 7"), ("correction", 1, 8, None, "Found one")]


@pytest.mark.parametrize(
    "remove",
    [
        lambda p: services.write_off_stock(product=p, quantity=11),
        lambda p: services.correct_stock(product=p, delta=-11),
    ],
)
def test_removing_more_units_than_in_stock_is_refused_and_changes_nothing(kettle, remove):
    with pytest.raises(services.InsufficientStock) as raised:
        remove(kettle)

    assert raised.value.message == "Cannot remove 11 units of Kettle: only 10 in stock."
    assert isinstance(raised.value, services.ShopError)
    assert stock_of(kettle) == 10
    assert not StockMovement.objects.exists()


def test_taking_every_unit_leaves_zero_and_one_more_is_refused(kettle):
    services.write_off_stock(product=kettle, quantity=10)
    with pytest.raises(services.InsufficientStock, match=r"^Cannot remove 1 unit of Kettle: only 0 in stock\.$"):
        services.correct_stock(product=kettle, delta=-1)
    assert stock_of(kettle) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"delta": 0, "reason": "correction"}, "other than zero"),
        ({"delta": -2, "reason": "received"}, "Receiving adds units"),
        ({"delta": 2, "reason": "written_off"}, "A write-off removes units"),
        ({"delta": 2, "reason": "sold"}, "move with their order"),
        ({"delta": 2, "reason": "returned"}, "move with their order"),
        ({"delta": 2, "reason": "stolen"}, "not a reason"),
        ({"delta": True, "reason": "correction"}, "whole number"),
        ({"delta": 2.5, "reason": "correction"}, "whole number"),
        ({"delta": services.MAX_STOCK + 1, "reason": "received"}, "at most 2,147,483,647"),
    ],
)
def test_stock_changes_that_make_no_sense_are_refused(kettle, change, message):
    with pytest.raises(services.InvalidStockChange, match=message):
        services.adjust_stock(product=kettle, **change)
    assert stock_of(kettle) == 10
    assert not StockMovement.objects.exists()


@pytest.mark.parametrize("quantity", [0, -1])
def test_receiving_or_writing_off_needs_at_least_one_unit(kettle, quantity):
    with pytest.raises(services.InvalidStockChange, match="at least 1"):
        services.receive_stock(product=kettle, quantity=quantity)
    with pytest.raises(services.InvalidStockChange, match="at least 1"):
        services.write_off_stock(product=kettle, quantity=quantity)
    assert stock_of(kettle) == 10


def test_stock_cannot_grow_past_what_the_database_holds(kettle):
    services.receive_stock(product=kettle, quantity=services.MAX_STOCK - 10)

    with pytest.raises(services.InvalidStockChange, match="stock cannot exceed 2,147,483,647 units"):
        services.receive_stock(product=kettle, quantity=1)

    assert stock_of(kettle) == services.MAX_STOCK


def test_receiving_a_batch_is_all_or_nothing(make_product, staff):
    kettle, mug, cup = make_product(name="Kettle", stock=1), make_product(name="Mug", stock=2), make_product(stock=3)
    Product.objects.filter(pk=cup.pk).update(stock=services.MAX_STOCK)

    with pytest.raises(services.InvalidStockChange):
        services.receive_stock_batch(quantities={kettle.pk: 5, mug.pk: 5, cup.pk: 1}, actor=staff)
    assert (stock_of(kettle), stock_of(mug)) == (1, 2)
    assert not StockMovement.objects.exists()

    movements = services.receive_stock_batch(quantities={kettle.pk: 5, mug.pk: 0, cup.pk: 0}, actor=staff, note="D-7")

    assert [(m.product, m.delta, m.stock_after, m.note) for m in movements] == [(kettle, 5, 6, "D-7")]
    assert (stock_of(kettle), stock_of(mug)) == (6, 2)


def test_a_product_with_stock_history_cannot_be_deleted(kettle):
    services.receive_stock(product=kettle, quantity=1)
    with pytest.raises(ProtectedError):
        kettle.delete()


# Sales and returns are movements too ---------------------------------------------------------


def test_a_checkout_records_one_sold_movement_per_product_with_its_order(shopper, make_product, bank):
    kettle, mug = make_product(name="Kettle", stock=10), make_product(name="Mug", stock=4)
    cart = services.get_cart(user=shopper, create=True)
    services.add_to_cart(cart=cart, product=kettle, quantity=2)
    services.add_to_cart(cart=cart, product=mug, quantity=4)

    order = async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=CARD)

    note = f"Order {order.number}"
    assert movements_of(kettle) == [("sold", -2, 8, order.number, note)]
    assert movements_of(mug) == [("sold", -4, 0, order.number, note)]
    assert (stock_of(kettle), stock_of(mug)) == (8, 0)


def test_taking_an_orders_stock_costs_the_same_few_queries_for_any_number_of_lines(shopper, make_product):
    def order_of(*products: Product) -> Order:
        order = Order.objects.create(user=shopper, total=Decimal("1.00"), checkout_token=secrets.token_urlsafe(24))
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=product, product_name=product.name, unit_price=product.price, quantity=1)
            for product in products
        )
        return order

    one_line, five_lines = order_of(make_product()), order_of(*(make_product() for _ in range(5)))

    with CaptureQueriesContext(connection) as one:
        services.take_order_stock(order=one_line)
    with CaptureQueriesContext(connection) as five:
        services.take_order_stock(order=five_lines)

    inserts = [query["sql"] for query in five.captured_queries if 'INSERT INTO "shop_stockmovement"' in query["sql"]]
    print(f"take_order_stock: {len(one)} queries for 1 line, {len(five)} for 5 lines")
    assert len(inserts) == 1
    assert len(five) == len(one)
    assert StockMovement.objects.filter(order=five_lines, reason="sold", delta=-1).count() == 5


def test_a_refused_payment_returns_its_units_as_a_movement(shopper, kettle, bank):
    declined = Card(number="4000000000000002", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=kettle, quantity=3)

    with pytest.raises(PaymentDeclined):
        async_to_sync(services.place_order)(user=shopper, checkout_token=secrets.token_urlsafe(24), card=declined)

    assert stock_of(kettle) == 10
    (sold_reason, sold, after_sale, _, note), (returned_reason, returned, after_return, _, same_note) = movements_of(
        kettle
    )
    assert (sold_reason, sold, after_sale, returned_reason, returned, after_return) == (
        "sold",
        -3,
        7,
        "returned",
        3,
        10,
    )
    assert note == same_note and note.startswith("Order ")  # The removed pending order is still named.


def test_cancelling_an_order_returns_its_units_as_a_movement(kettle, buy, staff):
    order = buy(kettle, 3)

    services.change_order_status(order=order, status=Order.Status.CANCELLED, actor=staff)

    assert stock_of(kettle) == 10
    note = f"Order {order.number}"
    assert movements_of(kettle) == [("sold", -3, 7, order.number, note), ("returned", 3, 10, order.number, note)]


def test_refunding_a_shipped_order_moves_no_stock(kettle, buy, staff):
    order = buy(kettle, 3)
    services.change_order_status(order=order, status=Order.Status.SHIPPED, actor=staff)

    services.change_order_status(order=order, status=Order.Status.REFUNDED, actor=staff)

    assert stock_of(kettle) == 7
    assert [reason for reason, *_ in movements_of(kettle)] == ["sold"]


def test_every_movement_starts_where_the_previous_one_left_off(kettle, buy, staff):
    services.receive_stock(product=kettle, quantity=5, actor=staff)
    first = buy(kettle, 4)
    services.write_off_stock(product=kettle, quantity=1, actor=staff)
    buy(kettle, 2)
    services.change_order_status(order=first, status=Order.Status.CANCELLED, actor=staff)
    services.correct_stock(product=kettle, delta=-2, actor=staff)

    history = movements_of(kettle)
    assert [reason for reason, *_ in history] == ["received", "sold", "written_off", "sold", "returned", "correction"]
    stock = 10
    for _, delta, stock_after, _, _ in history:
        stock += delta
        assert stock_after == stock
    assert stock_of(kettle) == stock == 10


# The admin ----------------------------------------------------------------------------------


def notes(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def product_form(client, product: Product, **changes) -> dict:
    url = f"/admin/shop/product/{product.pk}/change/"
    return {**change_form_data(client, url), **changes}


def test_stock_is_read_only_on_the_product_list_and_page(staff_client, kettle):
    changelist = staff_client.get("/admin/shop/product/").content.decode()
    page = staff_client.get(f"/admin/shop/product/{kettle.pk}/change/").content.decode()

    assert 'name="form-0-price"' in changelist and 'name="form-0-stock"' not in changelist
    assert 'name="stock"' not in page
    assert 'name="stock_change"' in page and 'name="stock_reason"' in page and 'name="stock_note"' in page


@pytest.mark.parametrize(
    ("change", "reason", "message", "stock"),
    [
        ("5", "received", "Received 5 units of Kettle; 15 in stock.", 15),
        ("-1", "written_off", "Wrote off 1 unit of Kettle; 9 in stock.", 9),
        ("-3", "correction", "Removed 3 units of Kettle (count correction); 7 in stock.", 7),
        ("2", "correction", "Added 2 units of Kettle (count correction); 12 in stock.", 12),
    ],
)
def test_the_product_page_changes_stock_through_the_service_and_says_so(
    staff_client, staff, kettle, change, reason, message, stock
):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    data = product_form(staff_client, kettle, stock_change=change, stock_reason=reason, stock_note="Shelf B")

    response = staff_client.post(url, data, follow=True)

    assert response.status_code == 200
    assert message in notes(response)
    assert stock_of(kettle) == stock
    movement = StockMovement.objects.get(product=kettle)
    assert (movement.reason, movement.delta, movement.actor, movement.note) == (reason, int(change), staff, "Shelf B")


def test_saving_the_product_page_without_a_stock_change_records_no_movement(staff_client, kettle):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    response = staff_client.post(url, product_form(staff_client, kettle, price="27.00", stock_change=""))
    assert response.status_code == 302
    assert (str(Product.objects.get(pk=kettle.pk).price), stock_of(kettle)) == ("27.00", 10)
    assert not StockMovement.objects.exists()


@pytest.mark.parametrize(
    ("change", "reason", "error"),
    [
        ("lots", "received", "Enter a whole number."),
        ("1.5", "received", "Enter a whole number."),
        ("99999999999999999999999999", "received", "Ensure this value is less than or equal to 2147483647."),
        ("-99999999999999999999999999", "correction", "Ensure this value is greater than or equal to -2147483647."),
        (
            "2147483647",
            "received",
            "Cannot add 2,147,483,647 units to Kettle: stock cannot exceed 2,147,483,647 units.",
        ),
        ("-3", "received", "Receiving adds units: give a number above zero (a write-off removes units)."),
        ("3", "written_off", "A write-off removes units: give a number below zero (receiving adds units)."),
        ("-11", "correction", "Cannot remove 11 units of Kettle: only 10 in stock."),
    ],
)
def test_the_product_page_refuses_a_bad_stock_change_with_a_form_error(staff_client, kettle, change, reason, error):
    url = f"/admin/shop/product/{kettle.pk}/change/"

    response = staff_client.post(url, product_form(staff_client, kettle, stock_change=change, stock_reason=reason))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["stock_change"] == [error]
    assert stock_of(kettle) == 10
    assert not StockMovement.objects.exists()


def test_the_product_page_refuses_a_reason_staff_cannot_give(staff_client, kettle):
    url = f"/admin/shop/product/{kettle.pk}/change/"
    response = staff_client.post(url, product_form(staff_client, kettle, stock_change="3", stock_reason="returned"))
    assert response.status_code == 200
    assert "Select a valid choice" in response.context["adminform"].form.errors["stock_reason"][0]
    assert stock_of(kettle) == 10


def test_a_removal_made_impossible_by_a_sale_after_the_check_is_refused_with_a_message(rf, staff, kettle, buy):
    """The form checked 8 of 10 could go; a checkout took 5 before the save: the service refuses."""
    from django.contrib import admin as django_admin
    from django.contrib.messages import get_messages
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.contrib.sessions.backends.db import SessionStore

    model_admin = django_admin.site.get_model_admin(Product)
    request = rf.post("/admin/shop/product/")
    request.user, request.session = staff, SessionStore()
    request._messages = FallbackStorage(request)
    stale = Product.objects.get(pk=kettle.pk)
    form = model_admin.get_form(request, stale)(
        instance=stale,
        data={"name": "Kettle", "slug": kettle.slug, "price": "25.00", "is_active": "on"}
        | {"stock_change": "-8", "stock_reason": "written_off"},
    )
    assert form.is_valid(), form.errors
    buy(kettle, 5)

    model_admin.save_model(request, form.save(commit=False), form, change=True)

    assert [str(message) for message in get_messages(request)] == ["Cannot remove 8 units of Kettle: only 5 in stock."]
    assert stock_of(kettle) == 5
    assert [movement.reason for movement in StockMovement.objects.all()] == ["sold"]


def test_the_product_page_shows_the_newest_movements_first(staff_client, kettle, buy, staff):
    services.receive_stock(product=kettle, quantity=5, actor=staff, note="Delivery 42")
    order = buy(kettle, 2)

    response = staff_client.get(f"/admin/shop/product/{kettle.pk}/change/")

    (inline,) = response.context["inline_admin_formsets"]
    rows = [(form.instance.reason, form.instance.delta) for form in inline.formset.forms]
    assert rows == [("sold", -2), ("received", 5)]
    page = response.content.decode()
    assert "Delivery 42" in page and order.number in page
    assert "All 2 stock movement(s) of Kettle" in page
    assert f"/admin/shop/stockmovement/?product__id__exact={kettle.pk}" in page


def test_a_long_history_shows_the_latest_fifty_and_the_page_still_saves_after_a_sale(staff_client, kettle, buy):
    from shop.admin import STOCK_HISTORY_ON_PAGE

    for _ in range(STOCK_HISTORY_ON_PAGE + 5):
        services.receive_stock(product=kettle, quantity=1)
    url = f"/admin/shop/product/{kettle.pk}/change/"
    data = product_form(staff_client, kettle, description="Long history")
    (inline,) = staff_client.get(url).context["inline_admin_formsets"]
    assert len(inline.formset.forms) == STOCK_HISTORY_ON_PAGE
    buy(kettle, 2)  # A new movement pushes the oldest shown one off the page before the save.

    response = staff_client.post(url, data)

    assert response.status_code == 302
    assert Product.objects.values_list("description", "stock").get(pk=kettle.pk) == ("Long history", 63)


def test_adding_a_product_records_its_initial_stock_as_received(staff_client, staff):
    response = staff_client.post(
        "/admin/shop/product/add/",
        {"name": "Teapot", "slug": "teapot", "description": "", "price": "30.00", "stock": "7", "is_active": "on"}
        | {"stock_movements-TOTAL_FORMS": "0", "stock_movements-INITIAL_FORMS": "0"},
        follow=True,
    )

    assert response.status_code == 200
    teapot = Product.objects.get(slug="teapot")
    assert teapot.stock == 7
    assert "Received 7 units of Teapot; 7 in stock." in notes(response)
    assert movements_of(teapot) == [("received", 7, 7, None, "Initial stock")]
    assert StockMovement.objects.get().actor == staff


@pytest.mark.parametrize("stock", ["-1", "many", "99999999999999999999"])
def test_adding_a_product_with_a_bad_initial_stock_is_a_form_error(staff_client, stock):
    response = staff_client.post(
        "/admin/shop/product/add/",
        {"name": "Teapot", "slug": "teapot", "description": "", "price": "30.00", "stock": stock, "is_active": "on"}
        | {"stock_movements-TOTAL_FORMS": "0", "stock_movements-INITIAL_FORMS": "0"},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["stock"]
    assert not Product.objects.exists()


def receive_action(client, *products: Product, **fields):
    data = {"action": "receive_stock", "_selected_action": [product.pk for product in products], **fields}
    return client.post("/admin/shop/product/", data, follow=True)


def test_the_receive_action_asks_how_many_units_then_adds_them(staff_client, staff, make_product):
    kettle, mug, cup = make_product(name="Kettle", stock=1), make_product(name="Mug", stock=0), make_product(stock=3)

    page = receive_action(staff_client, kettle, mug)

    assert page.status_code == 200
    assert [template.name for template in page.templates][0] == "admin/shop/product/receive_stock.html"
    html = page.content.decode()
    assert f'name="units_{kettle.pk}"' in html and f'name="units_{mug.pk}"' in html
    assert f'name="units_{cup.pk}"' not in html
    assert stock_of(kettle) == 1

    done = receive_action(
        staff_client,
        kettle,
        mug,
        apply="Receive stock",
        note="Delivery 9",
        **{f"units_{kettle.pk}": "12", f"units_{mug.pk}": "1"},
    )

    assert done.status_code == 200
    assert done.redirect_chain == [("/admin/shop/product/", 302)]
    assert notes(done) == ["Received 12 units of Kettle; 13 in stock.", "Received 1 unit of Mug; 1 in stock."]
    assert (stock_of(kettle), stock_of(mug), stock_of(cup)) == (13, 1, 3)
    assert {(m.product.name, m.delta, m.actor, m.note) for m in StockMovement.objects.all()} == {
        ("Kettle", 12, staff, "Delivery 9"),
        ("Mug", 1, staff, "Delivery 9"),
    }


@pytest.mark.parametrize(
    ("units", "error"),
    [
        ("lots", "Enter a whole number."),
        ("-4", "Ensure this value is greater than or equal to 0."),
        ("99999999999999999999999", "Ensure this value is less than or equal to 2147483647."),
        ("", "Enter how many units arrived for at least one product."),
        ("0", "Enter how many units arrived for at least one product."),
        ("2147483647", "Cannot add 2,147,483,647 units to Kettle: stock cannot exceed 2,147,483,647 units."),
    ],
)
def test_the_receive_action_refuses_bad_numbers_and_shows_the_page_again(staff_client, make_product, units, error):
    kettle, mug = make_product(name="Kettle", stock=1), make_product(name="Mug", stock=0)
    fields = {"apply": "Receive stock", f"units_{kettle.pk}": units, f"units_{mug.pk}": ""}

    response = receive_action(staff_client, kettle, mug, **fields)

    assert response.status_code == 200
    assert response.redirect_chain == []
    assert error in response.content.decode().replace("&#x27;", "'")
    assert (stock_of(kettle), stock_of(mug)) == (1, 0)
    assert not StockMovement.objects.exists()


def test_the_stock_movement_list_is_read_only_and_filters_by_reason_and_product(
    staff_client, kettle, buy, make_product
):
    mug = make_product(name="Mug", stock=5)
    services.receive_stock(product=mug, quantity=3, note="Mug delivery")
    order = buy(kettle, 2)
    movement = StockMovement.objects.get(product=kettle)

    listing = staff_client.get("/admin/shop/stockmovement/")
    sold = staff_client.get("/admin/shop/stockmovement/?reason__exact=sold")
    searched = staff_client.get("/admin/shop/stockmovement/?q=Mug")
    of_kettle = staff_client.get(f"/admin/shop/stockmovement/?product__id__exact={kettle.pk}")

    assert listing.status_code == sold.status_code == searched.status_code == of_kettle.status_code == 200
    assert {m.product.name for m in listing.context["cl"].result_list} == {"Kettle", "Mug"}
    assert [(m.product.name, m.delta) for m in sold.context["cl"].result_list] == [("Kettle", -2)]
    assert [(m.product.name, m.delta) for m in searched.context["cl"].result_list] == [("Mug", 3)]
    assert [m.order for m in of_kettle.context["cl"].result_list] == [order]
    page = staff_client.get(f"/admin/shop/stockmovement/{movement.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert staff_client.get("/admin/shop/stockmovement/add/").status_code == 403
    assert staff_client.post(f"/admin/shop/stockmovement/{movement.pk}/change/", {"delta": "5"}).status_code == 403
    assert staff_client.post(f"/admin/shop/stockmovement/{movement.pk}/delete/", {"post": "yes"}).status_code == 403
    assert StockMovement.objects.get(pk=movement.pk).delta == -2


# Concurrency (PostgreSQL: real threads, real row locks) -------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_receipts_write_offs_checkouts_and_stale_saves_racing_end_with_the_exact_stock(
    make_product, make_user, staff, settings
):
    settings.SANDBOX_BANK_LATENCY_MS = 20  # Checkouts overlap the other changes while the bank answers.
    payments.get_gateway.cache_clear()
    kettle, mug = make_product(name="Kettle", price="25.00", stock=10), make_product(name="Mug", stock=10)
    shoppers = [make_user() for _ in range(10)]
    for shopper in shoppers:
        cart = services.get_cart(user=shopper, create=True)
        services.add_to_cart(cart=cart, product=kettle, quantity=1)
        services.add_to_cart(cart=cart, product=mug, quantity=1)

    def stale_save():
        stale = Product.objects.get(pk=kettle.pk)
        stale.description = "Edited while selling"
        stale.save()

    jobs = (
        [lambda: services.receive_stock(product=Product(pk=kettle.pk), quantity=3, actor=staff) for _ in range(20)]
        + [lambda: services.write_off_stock(product=Product(pk=kettle.pk), quantity=1, actor=staff) for _ in range(5)]
        + [lambda: services.receive_stock_batch(quantities={mug.pk: 2, kettle.pk: 1}) for _ in range(5)]
        + [
            (
                lambda user=shopper: async_to_sync(services.place_order)(
                    user=user, checkout_token=secrets.token_urlsafe(24), card=CARD
                )
            )
            for shopper in shoppers
        ]
        + [stale_save for _ in range(5)]
    )
    outcomes = race(jobs)

    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert failures == []
    assert Order.objects.filter(status=Order.Status.PAID).count() == 10
    # Kettle: 10 + 20x3 - 5x1 + 5x1 - 10 sold; mug: 10 + 5x2 - 10 sold.
    assert (stock_of(kettle), stock_of(mug)) == (60, 10)
    for product, start in ((kettle, 10), (mug, 10)):
        stock = start
        for _, delta, stock_after, _, _ in movements_of(product):  # In pk order: the order they were applied.
            stock += delta
            assert stock_after == stock
        assert stock == stock_of(product)
    assert StockMovement.objects.filter(product=kettle).count() == 20 + 5 + 5 + 10

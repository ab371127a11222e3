"""Shipping addresses (issue 9): the checkout asks for one, the order keeps a copy, the address book offers it next time."""

import re
from datetime import date

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from shop import services
from shop.forms import AddressBookForm, CheckoutForm
from shop.models import Address, Order
from tests.checkout_data import SHIPPING_ADDRESS, shipping_fields

NEXT_YY = f"{(date.today().year + 1) % 100:02d}"
HOME = services.ShippingAddress(
    full_name="Alice Martin", line1="12 Rue de la Paix", city="Paris", postal_code="75002", country="FR"
)
WORK = services.ShippingAddress(
    full_name="Alice Martin", line1="1 Office Park", city="Lyon", postal_code="69001", country="FR", phone="0612345678"
)


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def shopper_client(client, shopper):
    client.force_login(shopper)
    return client


def text(response) -> str:
    return response.content.decode()


def fill_cart(user, product, quantity=1):
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=product, quantity=quantity)


def checkout_token(client) -> str:
    return re.search(r'name="checkout_token" value="([^"]+)"', text(client.get("/checkout/")))[1]


def pay(client, **fields):
    data = {
        **shipping_fields(),
        "save_address": "on",
        "number": "4242 4242 4242 4242",
        "expiry": f"12/{NEXT_YY}",
        "cvc": "123",
        "checkout_token": checkout_token(client),
    }
    data.update(fields)
    return client.post("/checkout/", {key: value for key, value in data.items() if value is not None})


def input_value(page: str, name: str) -> str:
    tag = re.search(rf'<input[^>]*name="{name}"[^>]*>', page)[0]
    value = re.search(r'value="([^"]*)"', tag)
    return value[1] if value else ""


# The address book (services) ------------------------------------------------------------


def test_the_first_address_becomes_the_default_and_a_second_does_not(shopper):
    home = services.add_address(user=shopper, address=HOME)
    work = services.add_address(user=shopper, address=WORK)
    home.refresh_from_db()
    assert (home.is_default, work.is_default) == (True, False)
    assert services.default_address(user=shopper) == home


def test_making_an_address_the_default_clears_the_old_one(shopper):
    home = services.add_address(user=shopper, address=HOME)
    work = services.add_address(user=shopper, address=WORK)

    services.set_default_address(user=shopper, address_id=work.pk)

    assert list(Address.objects.filter(user=shopper, is_default=True)) == [work]
    home.refresh_from_db()
    assert not home.is_default


def test_the_database_refuses_two_default_addresses(shopper):
    services.add_address(user=shopper, address=HOME)
    with pytest.raises(IntegrityError), transaction.atomic():
        Address.objects.create(user=shopper, is_default=True, **HOME.__dict__)


def test_deleting_the_default_address_hands_the_default_to_another(shopper):
    home = services.add_address(user=shopper, address=HOME)
    work = services.add_address(user=shopper, address=WORK)

    services.delete_address(user=shopper, address_id=home.pk)

    work.refresh_from_db()
    assert work.is_default
    assert list(Address.objects.filter(user=shopper)) == [work]


def test_remembering_an_address_already_in_the_book_reuses_it_as_default(shopper):
    home = services.add_address(user=shopper, address=HOME)
    services.add_address(user=shopper, address=WORK, make_default=True)
    same_place = services.ShippingAddress(
        full_name="alice  MARTIN", line1="12 rue de la paix", city="PARIS", postal_code="75002", country="FR"
    )

    remembered = services.remember_address(user=shopper, address=same_place)

    assert remembered == home
    assert Address.objects.filter(user=shopper).count() == 2
    assert services.default_address(user=shopper) == home


def test_ordering_again_to_the_default_address_reads_it_and_only_stamps_it(shopper, django_assert_num_queries):
    """Most checkouts of a returning shopper ship to their default: the paid checkout's response
    should not wait for a transaction that rewrites what is already true (issue 8: before, a
    lock, a read of the whole book and two UPDATEs per checkout).
    """
    home = services.add_address(user=shopper, address=HOME)
    services.add_address(user=shopper, address=WORK)
    same_place = services.ShippingAddress(**{**HOME.__dict__, "line1": "12  RUE de la Paix"})

    with django_assert_num_queries(2):  # The default read, and its "used now" stamp.
        remembered = services.remember_address(user=shopper, address=same_place)

    assert remembered == home
    assert services.default_address(user=shopper) == home
    assert Address.objects.filter(user=shopper).count() == 2


def test_the_address_ordered_to_last_takes_over_when_the_default_is_deleted(shopper):
    """Ordering again to the default counts as using it: deleting a newer default gives it back."""
    home = services.add_address(user=shopper, address=HOME)
    services.add_address(user=shopper, address=WORK)
    services.remember_address(user=shopper, address=HOME)
    office = services.remember_address(
        user=shopper,
        address=services.ShippingAddress(
            full_name="Alice Martin", line1="3 Quai Rambaud", city="Lyon", postal_code="69002", country="FR"
        ),
    )

    services.delete_address(user=shopper, address_id=office.pk)

    assert services.default_address(user=shopper) == home


def test_a_new_address_remembered_at_checkout_is_written_once_as_the_default(shopper):
    """Before: inserted, then updated to default, then updated again for its timestamp."""
    home = services.add_address(user=shopper, address=HOME)

    with CaptureQueriesContext(connection) as queries:
        work = services.remember_address(user=shopper, address=WORK)

    writes = [query["sql"] for query in queries.captured_queries if query["sql"].startswith(("INSERT", "UPDATE"))]
    assert len(writes) == 2, "\n".join(writes)  # The old default cleared, the new one inserted.
    assert services.default_address(user=shopper) == work
    home.refresh_from_db()
    assert not home.is_default
    assert list(Address.objects.filter(user=shopper)) == [work, home]


def test_another_shoppers_address_is_not_found(shopper, other_shopper):
    theirs = services.add_address(user=other_shopper, address=HOME)
    for action in (services.set_default_address, services.delete_address, services.get_address):
        with pytest.raises(services.AddressNotFound):
            action(user=shopper, address_id=theirs.pk)
    assert Address.objects.filter(pk=theirs.pk).exists()


# The address forms: bad inputs get clear messages -----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("full_name", "", "Enter your full name."),
        ("full_name", "A", "Enter the name of the person who receives the parcel."),
        ("line1", "", "Enter your address line 1."),
        ("city", "", "Enter your city."),
        ("postal_code", "", "Enter your postal code."),
        ("postal_code", "75 002 !!", "Enter a postal code of letters and digits, for example 75001 or SW1A 1AA."),
        ("country", "", "Choose a country."),
        ("country", "XX", "We do not ship to that country yet. Choose one from the list."),
        ("phone", "call me", "Enter a phone number of digits, for example +33 1 23 45 67 89."),
        ("phone", "12", "Enter a phone number of digits, for example +33 1 23 45 67 89."),
        ("line1", "x" * 201, "Keep it under 200 characters."),
    ],
)
def test_a_bad_address_is_refused_with_a_clear_message(field, value, error):
    form = AddressBookForm({**SHIPPING_ADDRESS, field: value})
    assert not form.is_valid()
    assert form.errors[field] == [error]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("email", "", "Enter the email address for your receipt."),
        ("email", "not-an-email", "Enter a valid email address."),
    ],
)
def test_checkout_form_needs_a_receipt_email(field, value, error):
    form = CheckoutForm(
        {**shipping_fields(), "number": "4242424242424242", "expiry": "12/40", "cvc": "123", field: value}
    )
    assert not form.is_valid()
    assert form.errors[field] == [error]


def test_an_address_is_tidied_before_it_is_kept():
    form = AddressBookForm({**SHIPPING_ADDRESS, "full_name": "  Alice   Martin ", "postal_code": "sw1a  1aa"})
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["full_name"], form.cleaned_data["postal_code"]) == ("Alice Martin", "SW1A 1AA")


def test_the_card_number_field_has_no_placeholder_that_looks_like_a_card():
    html = str(CheckoutForm()["number"])
    assert "placeholder" not in html
    assert "4242" not in html


# Checkout with an address ---------------------------------------------------------------------


def test_checkout_keeps_the_address_on_the_order_and_remembers_it(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)

    response = pay(shopper_client, email="alice.receipts@example.com")

    assert response.status_code == 302
    order = Order.objects.get()
    assert (order.shipping_name, order.shipping_line1, order.shipping_line2) == (
        "Alice Martin",
        "12 Rue de la Paix",
        "Floor 3",
    )
    assert (order.shipping_postal_code, order.shipping_city, order.shipping_country) == ("75002", "Paris", "FR")
    assert order.shipping_phone == "+33 1 23 45 67 89"
    assert order.email == order.receipt_email == "alice.receipts@example.com"
    [saved] = Address.objects.filter(user=shopper)
    assert saved.is_default and saved.line1 == "12 Rue de la Paix"


def test_checkout_without_remember_keeps_the_address_on_the_order_only(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    response = pay(shopper_client, save_address=None)
    assert response.status_code == 302
    assert Order.objects.get().shipping_city == "Paris"
    assert not Address.objects.filter(user=shopper).exists()


def test_a_later_change_to_the_address_book_does_not_move_a_placed_order(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    pay(shopper_client)
    saved = Address.objects.get(user=shopper)

    services.update_address(user=shopper, address_id=saved.pk, address=WORK)

    assert Order.objects.get().shipping_city == "Paris"


def test_the_next_checkout_offers_the_default_address_and_the_account_email(shopper_client, shopper, kettle):
    services.add_address(user=shopper, address=WORK)
    fill_cart(shopper, kettle)

    page = text(shopper_client.get("/checkout/"))

    assert input_value(page, "line1") == "1 Office Park"
    assert input_value(page, "city") == "Lyon"
    assert input_value(page, "phone") == "0612345678"
    assert input_value(page, "email") == shopper.email
    assert re.search(r'<option value="FR" selected>France</option>', page)


def test_the_checkout_can_start_from_another_saved_address(shopper_client, shopper, kettle):
    services.add_address(user=shopper, address=HOME)
    work = services.add_address(user=shopper, address=WORK)
    fill_cart(shopper, kettle)

    page = text(shopper_client.get(f"/checkout/?address={work.pk}"))

    assert input_value(page, "city") == "Lyon"
    assert f'href="?address={work.pk}" aria-current="true"' in page


def test_checkout_with_a_missing_address_is_400_with_the_errors_and_charges_nothing(
    shopper_client, shopper, kettle, bank
):
    fill_cart(shopper, kettle)

    response = pay(shopper_client, line1="", city="", country="ZZ", postal_code="!!")

    assert response.status_code == 400
    page = text(response)
    for message in ("Enter your address line 1.", "Enter your city.", "We do not ship to that country yet."):
        assert message in page
    # What was valid stays filled in, except the card number and CVC, which are never echoed.
    assert input_value(page, "full_name") == "Alice Martin"
    assert input_value(page, "expiry") == f"12/{NEXT_YY}"
    assert input_value(page, "number") == "" and input_value(page, "cvc") == ""
    assert not Order.objects.exists()
    assert bank.charges == []


def test_a_refused_card_is_shown_in_the_card_form_and_the_address_stays(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)

    response = pay(shopper_client, number="4000 0000 0000 0002")

    assert response.status_code == 402
    page = text(response)
    error = re.search(r'<div class="form-errors" role="alert" data-payment-error>(.*?)</div>', page, re.DOTALL)
    assert error and "Your card was declined. Please use another card." in error[1]
    assert page.index("data-payment-error") < page.index('name="number"')  # Right above the card.
    assert 'class="messages' not in page  # Not (only) a banner at the top of the page.
    assert input_value(page, "line1") == "12 Rue de la Paix"
    assert input_value(page, "number") == ""


def test_the_pay_button_is_wired_for_its_processing_state(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    page = text(shopper_client.get("/checkout/"))
    assert re.search(r'<form [^>]*class="checkout-form"[^>]*data-checkout-form', page)
    assert re.search(r'<button [^>]*data-pay-button data-busy-label="Asking your bank…"', page)
    assert '<script type="module" src="/static/shop/shop.js"></script>' in page
    assert "<script>" not in page  # No inline script: the behaviour lives in the static module.


# The order page and the receipt -----------------------------------------------------------------


def test_the_order_page_shows_the_delivery_address(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    pay(shopper_client)
    page = text(shopper_client.get(Order.objects.get().get_absolute_url()))
    address = re.search(r'<address class="address">(.*?)</address>', page, re.DOTALL)[1]
    for line in ("Alice Martin", "12 Rue de la Paix", "Floor 3", "75002 Paris", "France", "+33 1 23 45 67 89"):
        assert line in address


def test_the_order_page_says_where_the_receipt_was_emailed_once_it_was(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle)
    pay(shopper_client, email="alice.receipts@example.com")
    order = Order.objects.get()
    assert "We emailed your receipt" not in text(shopper_client.get(order.get_absolute_url()))

    services.record_receipt_sent(order_id=order.pk, sent_to="alice.receipts@example.com")

    page = text(shopper_client.get(order.get_absolute_url()))
    assert "We emailed your receipt to <strong>alice.receipts@example.com</strong>." in page


# The account page ------------------------------------------------------------------------------


def test_the_account_page_shows_username_email_password_link_and_addresses(shopper_client, shopper):
    services.add_address(user=shopper, address=HOME)
    page = text(shopper_client.get("/account/"))
    assert "<dd data-username>alice</dd>" in page
    assert input_value(page, "email") == "alice@example.com"
    assert 'href="/account/password/"' in page
    assert "Default: your next orders go here" in page and "12 Rue de la Paix" in page


def test_the_account_page_needs_a_login(client, db):
    response = client.get("/account/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/account/"


def test_the_shopper_changes_their_email(shopper_client, shopper):
    response = shopper_client.post("/account/", {"email": "Alice.New@Example.COM"}, follow=True)
    assert response.redirect_chain == [("/account/", 302)]
    shopper.refresh_from_db()
    assert shopper.email == "Alice.New@example.com"
    assert "Your email is now Alice.New@example.com." in text(response)


@pytest.mark.parametrize(
    ("email", "error"), [("", "Enter your email address."), ("nope", "Enter a valid email address.")]
)
def test_a_bad_email_is_refused_with_a_clear_message(shopper_client, shopper, email, error):
    response = shopper_client.post("/account/", {"email": email})
    assert response.status_code == 400
    assert error in text(response)
    shopper.refresh_from_db()
    assert shopper.email == "alice@example.com"


def test_the_shopper_changes_their_password_and_stays_signed_in(shopper_client, shopper):
    response = shopper_client.post(
        "/account/password/",
        {"old_password": "a-good-password-123", "new_password1": "tea-kettle-77-x", "new_password2": "tea-kettle-77-x"},
        follow=True,
    )
    assert response.redirect_chain == [("/account/", 302)]
    assert "Your password was changed." in text(response)
    shopper.refresh_from_db()
    assert shopper.check_password("tea-kettle-77-x")
    assert shopper_client.get("/account/").status_code == 200  # Still signed in.


def test_a_wrong_old_password_is_refused(shopper_client, shopper):
    response = shopper_client.post(
        "/account/password/",
        {"old_password": "wrong", "new_password1": "tea-kettle-77-x", "new_password2": "tea-kettle-77-x"},
    )
    assert response.status_code == 200
    assert "Your old password was entered incorrectly." in text(response)
    shopper.refresh_from_db()
    assert shopper.check_password("a-good-password-123")


def test_the_shopper_adds_edits_defaults_and_removes_addresses(shopper_client, shopper):
    response = shopper_client.post("/account/addresses/new/", {**SHIPPING_ADDRESS}, follow=True)
    assert response.redirect_chain == [("/account/", 302)] and "Address saved." in text(response)
    home = Address.objects.get(user=shopper)
    assert home.is_default  # The first one.

    shopper_client.post("/account/addresses/new/", {**SHIPPING_ADDRESS, "line1": "1 Office Park", "city": "Lyon"})
    work = Address.objects.get(user=shopper, city="Lyon")
    assert not work.is_default

    shopper_client.post(
        f"/account/addresses/{work.pk}/", {**SHIPPING_ADDRESS, "line1": "2 Office Park", "city": "Lyon"}
    )
    work.refresh_from_db()
    assert work.line1 == "2 Office Park"

    shopper_client.post(f"/account/addresses/{work.pk}/default/")
    assert services.default_address(user=shopper) == work

    shopper_client.post(f"/account/addresses/{work.pk}/delete/")
    assert list(Address.objects.filter(user=shopper)) == [home]
    home.refresh_from_db()
    assert home.is_default


def test_a_bad_address_form_is_400_with_its_errors(shopper_client, shopper):
    response = shopper_client.post("/account/addresses/new/", {**SHIPPING_ADDRESS, "city": "", "country": "XX"})
    assert response.status_code == 400
    assert "Enter your city." in text(response)
    assert not Address.objects.exists()


@pytest.mark.parametrize("suffix", ["", "default/", "delete/"])
def test_another_shoppers_address_is_404_on_every_address_page(shopper_client, other_shopper, suffix):
    theirs = services.add_address(user=other_shopper, address=HOME)
    response = shopper_client.post(f"/account/addresses/{theirs.pk}/{suffix}", {**SHIPPING_ADDRESS, "city": "Nice"})
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.city == "Paris"


@pytest.mark.parametrize("suffix", ["default/", "delete/"])
def test_address_actions_are_post_only(shopper_client, shopper, suffix):
    address = services.add_address(user=shopper, address=HOME)
    assert shopper_client.get(f"/account/addresses/{address.pk}/{suffix}").status_code == 405

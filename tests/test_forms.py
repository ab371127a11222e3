"""Forms: the card checks made before the bank is asked, and the cart's quantity bounds."""

from datetime import date

import pytest

from shop.forms import CartLineForm, CartRemoveForm, CartUpdateForm, CheckoutForm, SignUpForm, luhn_is_valid
from shop.payments import Card
from tests.checkout_data import shipping_fields

TOKEN = "t" * 32
TODAY = date.today()


def checkout_form(**overrides) -> CheckoutForm:
    data = {
        **shipping_fields(),
        "number": "4242424242424242",
        "expiry": f"12/{(TODAY.year + 1) % 100:02d}",
        "cvc": "123",
        "checkout_token": TOKEN,
    }
    data.update(overrides)
    return CheckoutForm(data)


# Luhn and card number -----------------------------------------------------------------


@pytest.mark.parametrize("number", ["4242424242424242", "4000000000000002", "5555555555554444", "79927398713", "0"])
def test_luhn_accepts_valid_numbers(number):
    assert luhn_is_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "4000000000000001", "79927398710", "1234567812345678"])
def test_luhn_rejects_a_wrong_check_digit(number):
    assert not luhn_is_valid(number)


@pytest.mark.parametrize("number", ["4242 4242 4242 4242", " 4242-4242-4242-4242 ", "4242424242424242"])
def test_card_number_with_spaces_or_dashes_is_accepted(number):
    form = checkout_form(number=number)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["number"] == "4242424242424242"


def test_card_number_failing_luhn_is_refused():
    form = checkout_form(number="4242 4242 4242 4241")
    assert not form.is_valid()
    assert form.errors["number"] == ["This card number is not valid. Please check it."]


@pytest.mark.parametrize("number", ["4242", "4242abcd42424242", "42424242424242424242", ""])
def test_card_number_of_the_wrong_shape_is_refused(number):
    form = checkout_form(number=number)
    assert not form.is_valid()
    assert form.errors["number"] in (
        ["Enter the 12 to 19 digits of your card number."],
        ["This field is required."],
    )


def test_valid_form_builds_the_card():
    form = checkout_form(number="4242 4242 4242 4242", expiry="07 / 2031", cvc=" 4321 ")
    assert form.is_valid(), form.errors
    assert form.card() == Card(number="4242424242424242", expiry_month=7, expiry_year=2031, cvc="4321")


# Expiry -------------------------------------------------------------------------------


def test_card_expiring_this_month_is_accepted():
    form = checkout_form(expiry=f"{TODAY.month:02d}/{TODAY.year % 100:02d}")
    assert form.is_valid(), form.errors
    assert form.cleaned_data["expiry"] == (TODAY.month, TODAY.year)


def test_expired_card_is_refused():
    last_year = TODAY.year - 1
    form = checkout_form(expiry=f"12/{last_year % 100:02d}")
    assert not form.is_valid()
    assert form.errors["expiry"] == ["This card has expired."]


@pytest.mark.parametrize("expiry", ["13/30", "00/30", "1230", "12-30", "ab/cd", "12/3", "1/2/30"])
def test_expiry_not_in_mm_yy_is_refused(expiry):
    form = checkout_form(expiry=expiry)
    assert not form.is_valid()
    assert form.errors["expiry"] == ["Enter the expiry date as MM/YY, for example 04/29."]


def test_expiry_decades_ahead_is_refused():
    form = checkout_form(expiry=f"01/{TODAY.year + 30}")
    assert not form.is_valid()
    assert form.errors["expiry"] == ["Enter a real expiry date."]


# CVC and token ------------------------------------------------------------------------


@pytest.mark.parametrize("cvc", ["12", "abc", "12a", "1 2"])
def test_bad_cvc_is_refused(cvc):
    form = checkout_form(cvc=cvc)
    assert not form.is_valid()
    assert form.errors["cvc"] == ["Enter the 3 or 4 digits on the back of your card."]


def test_cvc_longer_than_four_digits_is_refused():
    form = checkout_form(cvc="12345")
    assert not form.is_valid()
    assert "at most 4 characters" in form.errors["cvc"][0]


@pytest.mark.parametrize(
    "token", ["short", "x" * 65, "has spaces in it and is long enough", "<script>alert(1)</script>xx"]
)
def test_malformed_checkout_token_is_refused(token):
    form = checkout_form(checkout_token=token)
    assert not form.is_valid()
    assert form.errors["checkout_token"] == ["This checkout form has expired. Please try again."]


def test_card_fields_are_never_echoed_back_into_the_page():
    form = checkout_form(number="4242 4242 4242 4241", cvc="12")
    assert not form.is_valid()
    html = str(form["number"]) + str(form["cvc"])
    assert "4241" not in html
    assert 'value="12"' not in html


# Cart quantities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "error"),
    [
        ("0", "Enter 1 or more."),
        ("-1", "Enter 1 or more."),
        ("21", "You can buy at most 20 of Kettle per order."),
        ("abc", "Enter a whole number."),
        ("1.5", "Enter a whole number."),
        ("", "Enter a quantity."),
    ],
)
def test_cart_line_quantity_out_of_bounds_is_refused(make_product, quantity, error):
    form = CartLineForm({"product": make_product(name="Kettle").pk, "quantity": quantity})
    assert not form.is_valid()
    assert form.errors["quantity"] == [error]


@pytest.mark.parametrize("quantity", ["1", "20", " 3 "])
def test_cart_line_quantity_within_bounds_is_accepted(make_product, quantity):
    product = make_product()
    form = CartLineForm({"product": product.pk, "quantity": quantity})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {"product": product, "quantity": int(quantity)}


def test_cart_line_max_follows_the_setting(make_product, settings):
    settings.SHOP_MAX_QUANTITY_PER_LINE = 5
    form = CartLineForm({"product": make_product(name="Kettle").pk, "quantity": "6"})
    assert form.errors["quantity"] == ["You can buy at most 5 of Kettle per order."]
    assert 'max="5"' in str(form["quantity"])


def test_cart_update_allows_zero_but_not_negative(make_product):
    product = make_product()
    assert CartUpdateForm({"product": product.pk, "quantity": "0"}).is_valid()
    form = CartUpdateForm({"product": product.pk, "quantity": "-1"})
    assert form.errors["quantity"] == ["Enter 0 or more."]


@pytest.mark.parametrize("product", ["", "999999", "abc"])
def test_unknown_or_missing_product_is_refused(db, product):
    form = CartLineForm({"product": product, "quantity": "1"})
    assert not form.is_valid()
    assert form.errors["product"] in (["That product is not in our catalog."], ["Choose a product."])


def test_inactive_product_cannot_be_added_but_can_be_removed(make_product):
    product = make_product(is_active=False)
    form = CartLineForm({"product": product.pk, "quantity": "1"})
    assert form.errors["product"] == ["That product is not in our catalog."]
    assert CartRemoveForm({"product": product.pk}).is_valid()


def test_signup_requires_an_email(db):
    form = SignUpForm({"username": "carol", "password1": "a-good-password-123", "password2": "a-good-password-123"})
    assert not form.is_valid()
    assert "email" in form.errors

"""Storefront pages: who sees what, and a clear answer (never a 500) to every bad input."""

import re
import secrets
from datetime import date

import pytest
from asgiref.sync import async_to_sync

from shop import services
from shop.models import Cart, Order, Payment, Product
from shop.payments import Card
from tests.checkout_data import shipping_fields

NEXT_YY = f"{(date.today().year + 1) % 100:02d}"
APPROVED = "4242 4242 4242 4242"
DECLINED = "4000 0000 0000 0002"


@pytest.fixture
def kettle(make_product):
    return make_product(name="Kettle", price="25.00", stock=10)


@pytest.fixture
def shopper_client(client, shopper):
    client.force_login(shopper)
    return client


def text(response) -> str:
    return response.content.decode()


def cart_quantities(user) -> dict[str, int]:
    cart = services.get_cart(user=user)
    return {line.product.name: line.quantity for line in cart.lines_with_products()} if cart else {}


def fill_cart(user, product, quantity=1):
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=product, quantity=quantity)


def place_order(user, product, quantity=1) -> Order:
    fill_cart(user, product, quantity)
    card = Card(number="4242424242424242", expiry_month=12, expiry_year=date.today().year + 1, cvc="123")
    return async_to_sync(services.place_order)(user=user, checkout_token=secrets.token_urlsafe(24), card=card)


def checkout_token(client) -> str:
    """Open the checkout page as the shopper would and read the token it carries."""
    response = client.get("/checkout/")
    assert response.status_code == 200
    token = re.search(r'name="checkout_token" value="([^"]+)"', text(response))[1]
    assert token == client.session["checkout_token"]
    return token


def pay(client, token, number=APPROVED, expiry=None, cvc="123", **fields):
    data = {"number": number, "expiry": expiry or f"12/{NEXT_YY}", "cvc": cvc, "checkout_token": token}
    return client.post("/checkout/", {**shipping_fields(), **data, **fields})


# Catalog and product pages ----------------------------------------------------------


def test_catalog_lists_active_products_with_their_stock_state(client, make_product):
    make_product(name="Kettle", stock=10)
    make_product(name="Mug", stock=3)
    make_product(name="Grinder", stock=0)
    make_product(name="Retired Teapot", stock=10, is_active=False)

    response = client.get("/")

    assert response.status_code == 200
    page = text(response)
    assert "Kettle" in page and "Mug" in page and "Grinder" in page
    assert "Retired Teapot" not in page
    assert "in stock" in page
    assert "only 3 left" in page
    assert "sold out" in page


def test_catalog_is_paginated(client, make_product):
    for number in range(13):
        make_product(name=f"Item {number:02d}")

    first, second = client.get("/"), client.get("/?page=2")

    assert [product.name for product in first.context["products"]] == [f"Item {number:02d}" for number in range(12)]
    assert [product.name for product in second.context["products"]] == ["Item 12"]
    assert "Page 1 of 2" in text(first)
    assert 'href="?page=2"' in text(first)
    assert client.get("/?page=3").status_code == 404
    assert client.get("/?page=abc").status_code == 404


def test_product_page_shows_the_product_and_an_add_form(client, make_product):
    product = make_product(name="Mug", price="4.50", stock=2)
    response = client.get(f"/products/{product.slug}/")
    assert response.status_code == 200
    page = text(response)
    assert "Mug" in page and "€4.50" in page and "only 2 left" in page
    assert 'action="/cart/add/"' in page
    assert f'value="{product.pk}"' in page


def test_unknown_or_inactive_product_is_404(client, make_product):
    retired = make_product(name="Teapot", is_active=False)
    assert client.get("/products/no-such-thing/").status_code == 404
    assert client.get(f"/products/{retired.slug}/").status_code == 404


# Cart -------------------------------------------------------------------------------


def test_cart_page_shows_an_empty_cart(client):
    response = client.get("/cart/")
    assert response.status_code == 200
    assert "Your cart is empty." in text(response)


def test_anonymous_visitor_adds_to_a_session_cart(client, kettle):
    response = client.post("/cart/add/", {"product": kettle.pk, "quantity": "2"})
    assert response.status_code == 302
    assert response["Location"] == "/cart/"

    page = text(client.get("/cart/"))
    assert "Added 2 × Kettle to your cart." in page
    assert "Kettle" in page and "€50.00" in page
    cart = Cart.objects.get(pk=client.session["cart_id"])
    assert (cart.user, cart.item_count) == (None, 2)


def test_add_to_cart_returns_to_a_safe_next_page_only(shopper_client, kettle):
    response = shopper_client.post(
        "/cart/add/", {"product": kettle.pk, "quantity": "1", "next": kettle.get_absolute_url()}
    )
    assert response["Location"] == kettle.get_absolute_url()
    response = shopper_client.post(
        "/cart/add/", {"product": kettle.pk, "quantity": "1", "next": "https://evil.example/"}
    )
    assert response["Location"] == "/cart/"


def test_cart_page_warns_about_lines_that_no_longer_fit_the_stock(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle, 5)
    Product.objects.filter(pk=kettle.pk).update(stock=2)
    response = shopper_client.get("/cart/")
    assert response.status_code == 200
    assert "Only 2 left of Kettle." in text(response)


@pytest.mark.parametrize(
    ("quantity", "error"),
    [
        ("0", "Enter 1 or more."),
        ("-1", "Enter 1 or more."),
        ("21", "You can buy at most 20 of Kettle per order."),
        ("abc", "Enter a whole number."),
        ("", "Enter a quantity."),
        ("1.5", "Enter a whole number."),
    ],
)
def test_add_with_a_bad_quantity_shows_the_error_on_the_product_page(shopper_client, shopper, kettle, quantity, error):
    response = shopper_client.post("/cart/add/", {"product": kettle.pk, "quantity": quantity})
    assert response.status_code == 400
    assert error in text(response)
    assert "Kettle" in text(response)
    assert cart_quantities(shopper) == {}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"quantity": "1"}, "Choose a product."),
        ({"product": "999999", "quantity": "1"}, "That product is not in our catalog."),
        ({"product": "abc", "quantity": "1"}, "That product is not in our catalog."),
        ({"product": "9" * 30, "quantity": "1"}, "That product is not in our catalog."),
    ],
)
def test_add_of_a_missing_or_unknown_product_says_so(client, db, data, error):
    response = client.post("/cart/add/", data, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/"
    assert error in text(response)


def test_add_of_an_inactive_product_says_so(client, make_product):
    retired = make_product(name="Teapot", is_active=False)
    response = client.post("/cart/add/", {"product": retired.pk, "quantity": "1"}, follow=True)
    assert "That product is not in our catalog." in text(response)


def test_add_more_than_stock_says_how_many_are_left(shopper_client, shopper, make_product):
    mug = make_product(name="Mug", stock=2)
    response = shopper_client.post("/cart/add/", {"product": mug.pk, "quantity": "3"})
    assert response.status_code == 409
    assert "Only 2 left of Mug." in text(response)
    assert cart_quantities(shopper) == {}


def test_add_of_a_sold_out_product_says_so(shopper_client, shopper, make_product):
    mug = make_product(name="Mug", stock=0)
    response = shopper_client.post("/cart/add/", {"product": mug.pk, "quantity": "1"})
    assert response.status_code == 409
    assert "Mug is sold out." in text(response)
    assert cart_quantities(shopper) == {}


def test_update_sets_the_quantity(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle, 1)
    response = shopper_client.post("/cart/update/", {"product": kettle.pk, "quantity": "4"}, follow=True)
    assert "Updated Kettle to 4." in text(response)
    assert cart_quantities(shopper) == {"Kettle": 4}


def test_update_to_zero_removes_the_line(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle, 1)
    response = shopper_client.post("/cart/update/", {"product": kettle.pk, "quantity": "0"}, follow=True)
    assert "Removed Kettle." in text(response)
    assert cart_quantities(shopper) == {}


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"quantity": "-1"}, 400, "Enter 0 or more."),
        ({"quantity": "21"}, 400, "You can buy at most 20 of Kettle per order."),
        ({"quantity": "9" * 30}, 400, "You can buy at most 20 of Kettle per order."),
        ({"quantity": "abc"}, 400, "Enter a whole number."),
        ({"quantity": ""}, 400, "Enter a quantity."),
        ({"quantity": "11"}, 409, "Only 10 left of Kettle."),
    ],
)
def test_bad_update_is_shown_at_its_line_and_keeps_the_line(shopper_client, shopper, kettle, data, status, error):
    fill_cart(shopper, kettle, 2)
    response = shopper_client.post("/cart/update/", {"product": kettle.pk, **data})
    assert response.status_code == status
    page = text(response)
    row = re.search(rf'<tr data-product="{kettle.slug}"[^>]*>.*?</tr>', page, re.DOTALL)[0]
    assert f'<p class="line-error" id="quantity-{kettle.pk}-error" role="alert">{error}</p>' in row
    assert 'aria-invalid="true"' in row
    assert 'class="messages' not in page  # At the line, not in a banner above the table.
    assert cart_quantities(shopper) == {"Kettle": 2}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"product": "999999", "quantity": "1"}, "That product is not in our catalog."),
        ({"product": "", "quantity": "1"}, "Choose a product."),
    ],
)
def test_update_of_an_unknown_product_says_why_at_the_top(shopper_client, shopper, kettle, data, error):
    fill_cart(shopper, kettle, 2)
    response = shopper_client.post("/cart/update/", data, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/cart/"
    assert error in text(response)
    assert cart_quantities(shopper) == {"Kettle": 2}


def test_remove_deletes_the_line(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle, 2)
    response = shopper_client.post("/cart/remove/", {"product": kettle.pk}, follow=True)
    assert "Removed Kettle." in text(response)
    assert cart_quantities(shopper) == {}


@pytest.mark.parametrize(
    ("product", "error"), [("", "Choose a product."), ("999999", "That product is not in our catalog.")]
)
def test_bad_remove_says_why(shopper_client, shopper, kettle, product, error):
    fill_cart(shopper, kettle, 2)
    response = shopper_client.post("/cart/remove/", {"product": product}, follow=True)
    assert response.status_code == 200
    assert error in text(response)
    assert cart_quantities(shopper) == {"Kettle": 2}


# GET /accounts/logout/ shows a confirmation page instead: tests/test_security.py.
@pytest.mark.parametrize("url", ["/cart/add/", "/cart/update/", "/cart/remove/"])
def test_get_on_a_post_only_endpoint_is_405(client, db, url):
    assert client.get(url).status_code == 405


def test_checkout_refuses_other_methods(shopper_client):
    assert shopper_client.put("/checkout/").status_code == 405


# Checkout ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/checkout/", "/orders/"])
def test_anonymous_visitor_is_sent_to_log_in(client, db, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_anonymous_checkout_post_is_sent_to_log_in(client, kettle):
    response = client.post(
        "/checkout/", {"number": APPROVED, "expiry": f"12/{NEXT_YY}", "cvc": "123", "checkout_token": "x" * 32}
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not Order.objects.exists()


def test_checkout_page_shows_the_cart_and_the_card_form(shopper_client, shopper, kettle):
    fill_cart(shopper, kettle, 2)
    response = shopper_client.get("/checkout/")
    assert response.status_code == 200
    page = text(response)
    assert "2 × Kettle" in page and "€50.00" in page
    for name in ("number", "expiry", "cvc"):
        assert f'name="{name}"' in page
    assert f'name="checkout_token" value="{shopper_client.session["checkout_token"]}"' in page


def test_checkout_with_an_empty_cart_goes_back_to_the_catalog(shopper_client):
    response = shopper_client.get("/checkout/", follow=True)
    assert response.redirect_chain == [("/", 302)]
    assert "Your cart is empty." in text(response)


def test_successful_checkout_redirects_to_the_paid_order(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    token = checkout_token(shopper_client)

    response = pay(shopper_client, token)

    order = Order.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/orders/{order.number}/"
    assert order.status == Order.Status.PAID
    page = text(shopper_client.get(response["Location"]))
    assert f"Thank you! Order {order.number} is paid." in page
    assert "data-order-status>Paid<" in page
    assert "€50.00" in page
    assert cart_quantities(shopper) == {}
    assert len(bank.charges) == 1


def test_resubmitting_a_successful_checkout_finds_the_same_order(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    token = checkout_token(shopper_client)

    first = pay(shopper_client, token)
    again = pay(shopper_client, token)

    assert again.status_code == 302
    assert again["Location"] == first["Location"]
    assert Order.objects.count() == 1
    assert Payment.objects.count() == 1
    assert len(bank.charges) == 1
    assert Product.objects.get(pk=kettle.pk).stock == 8


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("number", "4242 4242 4242 4241", "This card number is not valid. Please check it."),
        ("number", "1234", "Enter the 12 to 19 digits of your card number."),
        ("expiry", "01/20", "This card has expired."),
        ("expiry", "13/30", "Enter the expiry date as MM/YY, for example 04/29."),
        ("cvc", "12", "Enter the 3 or 4 digits on the back of your card."),
        ("cvc", "", "This field is required."),
    ],
)
def test_checkout_with_a_bad_card_is_400_with_the_error(shopper_client, shopper, kettle, bank, field, value, error):
    fill_cart(shopper, kettle, 2)
    data = {
        **shipping_fields(),
        "number": APPROVED,
        "expiry": f"12/{NEXT_YY}",
        "cvc": "123",
        "checkout_token": checkout_token(shopper_client),
    }
    data[field] = value

    response = shopper_client.post("/checkout/", data)

    assert response.status_code == 400
    assert error in text(response)
    assert "4241" not in text(response)
    assert not Order.objects.exists()
    assert bank.charges == []
    assert cart_quantities(shopper) == {"Kettle": 2}


def test_checkout_with_a_forged_token_is_refused(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    real = checkout_token(shopper_client)

    response = pay(shopper_client, secrets.token_urlsafe(24))

    assert response.status_code == 409
    assert "This checkout form has expired. Please check your cart and pay again." in text(response)
    assert shopper_client.session["checkout_token"] != real
    assert not Order.objects.exists()
    assert bank.charges == []


def test_checkout_with_a_malformed_token_is_refused(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    checkout_token(shopper_client)
    response = pay(shopper_client, "<not a token>")
    assert response.status_code == 400
    assert "This checkout form has expired. Please try again." in text(response)
    assert not Order.objects.exists()


def test_checkout_with_another_shoppers_token_is_refused(client, shopper, other_shopper, kettle, bank):
    place_order(other_shopper, kettle)
    stolen = Order.objects.get().checkout_token
    fill_cart(shopper, kettle, 1)
    client.force_login(shopper)
    checkout_token(client)

    response = pay(client, stolen)

    assert response.status_code == 409
    assert Order.objects.count() == 1
    assert cart_quantities(shopper) == {"Kettle": 1}


def test_declined_card_shows_the_banks_message_and_keeps_the_cart(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 2)
    token = checkout_token(shopper_client)

    response = pay(shopper_client, token, number=DECLINED)

    assert response.status_code == 402
    page = text(response)
    assert "Your card was declined. Please use another card." in page
    assert not Order.objects.exists()
    assert cart_quantities(shopper) == {"Kettle": 2}
    assert Product.objects.get(pk=kettle.pk).stock == 10
    # The refused token is spent: the page carries a fresh one, and paying with it works.
    fresh = shopper_client.session["checkout_token"]
    assert fresh != token
    assert f'name="checkout_token" value="{fresh}"' in page
    assert "0002" not in re.search(r'name="number"[^>]*>', page)[0]

    retry = pay(shopper_client, fresh)

    assert retry.status_code == 302
    assert Order.objects.get().status == Order.Status.PAID


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("4000 0000 0000 9995", "Your card has insufficient funds. Please use another card."),
        (
            "4000 0000 0000 0119",
            "The bank could not be reached. You have not been charged; please try again in a moment.",
        ),
    ],
)
def test_other_refusals_show_their_message(shopper_client, shopper, kettle, bank, number, message):
    fill_cart(shopper, kettle, 1)
    response = pay(shopper_client, checkout_token(shopper_client), number=number)
    assert response.status_code == 402
    assert message in text(response)
    assert not Order.objects.exists()
    assert cart_quantities(shopper) == {"Kettle": 1}


def test_checkout_when_stock_ran_out_sends_the_shopper_to_the_cart(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 3)
    token = checkout_token(shopper_client)
    Product.objects.filter(pk=kettle.pk).update(stock=1)

    response = pay(shopper_client, token)

    assert response.status_code == 302
    assert response["Location"] == "/cart/"
    assert "Only 1 left of Kettle." in text(shopper_client.get("/cart/"))
    assert not Order.objects.exists()
    assert bank.charges == []
    assert cart_quantities(shopper) == {"Kettle": 3}


def test_paying_an_emptied_cart_says_it_is_empty(shopper_client, shopper, kettle, bank):
    fill_cart(shopper, kettle, 1)
    token = checkout_token(shopper_client)
    services.remove_from_cart(cart=services.get_cart(user=shopper), product=kettle)

    response = pay(shopper_client, token, cvc="123")

    assert response.status_code == 302
    assert "Your cart is empty." in text(shopper_client.get(response["Location"]))
    assert not Order.objects.exists()


# Orders -----------------------------------------------------------------------------


def test_order_list_shows_only_the_shoppers_own_orders(shopper_client, shopper, other_shopper, kettle):
    mine, theirs = place_order(shopper, kettle), place_order(other_shopper, kettle)
    response = shopper_client.get("/orders/")
    assert response.status_code == 200
    assert mine.number in text(response)
    assert theirs.number not in text(response)


def test_order_list_without_orders_says_so(shopper_client):
    assert "You have not placed an order yet." in text(shopper_client.get("/orders/"))


def test_order_detail_shows_lines_timeline_and_payment(shopper_client, shopper, kettle):
    order = place_order(shopper, kettle, 2)
    response = shopper_client.get(f"/orders/{order.number}/")
    assert response.status_code == 200
    page = text(response)
    assert order.number in page
    assert "Kettle" in page and "€50.00" in page
    # The timeline speaks the shopper's language: no stock notes, no charge references.
    assert "Order placed" in page and "Payment received" in page
    assert "Stock reserved" not in page and "awaiting the bank" not in page
    assert order.payments.get().reference not in page
    assert "card ending 4242" in page


def test_another_shoppers_order_is_404(shopper_client, other_shopper, kettle):
    theirs = place_order(other_shopper, kettle)
    assert shopper_client.get(f"/orders/{theirs.number}/").status_code == 404
    assert shopper_client.get("/orders/NOSUCHORDR/").status_code == 404
    assert shopper_client.get(f"/orders/{'X' * 300}/").status_code == 404


def test_anonymous_order_detail_is_sent_to_log_in(client, other_shopper, kettle):
    order = place_order(other_shopper, kettle)
    response = client.get(f"/orders/{order.number}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# Accounts ---------------------------------------------------------------------------


def test_login_and_signup_pages_render(client, db):
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/accounts/signup/").status_code == 200


def test_login_with_a_wrong_password_says_so(client, shopper):
    response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "correct username and password" in text(response)
    assert "_auth_user_id" not in client.session


def test_signup_creates_the_user_and_logs_in(client, django_user_model):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "carol",
            "email": "carol@example.com",
            "password1": "a-good-password-123",
            "password2": "a-good-password-123",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    user = django_user_model.objects.get(username="carol")
    assert user.email == "carol@example.com"
    assert client.session["_auth_user_id"] == str(user.pk)
    assert "Welcome, carol!" in text(client.get("/"))


def test_signup_keeps_what_the_visitor_put_in_the_cart(client, django_user_model, kettle):
    client.post("/cart/add/", {"product": kettle.pk, "quantity": "3"})
    client.post(
        "/accounts/signup/",
        {
            "username": "carol",
            "email": "carol@example.com",
            "password1": "a-good-password-123",
            "password2": "a-good-password-123",
        },
    )
    assert cart_quantities(django_user_model.objects.get(username="carol")) == {"Kettle": 3}


def test_signup_with_mismatched_passwords_shows_the_error(client, django_user_model):
    response = client.post(
        "/accounts/signup/",
        {"username": "carol", "email": "carol@example.com", "password1": "a-good-password-123", "password2": "other"},
    )
    assert response.status_code == 200
    assert "didn’t match" in text(response) or "didn&#x27;t match" in text(response)
    assert not django_user_model.objects.filter(username="carol").exists()


def test_signup_keeps_a_safe_next_only(client, db):
    data = {
        "username": "carol",
        "email": "carol@example.com",
        "password1": "a-good-password-123",
        "password2": "a-good-password-123",
    }
    assert client.post("/accounts/signup/?next=/cart/", data)["Location"] == "/cart/"
    client.logout()
    data["username"] = "dave"
    assert client.post("/accounts/signup/?next=https://evil.example/", data)["Location"] == "/"


def test_logout_by_post_signs_out(shopper_client):
    response = shopper_client.post("/accounts/logout/")
    assert response.status_code == 302
    assert "_auth_user_id" not in shopper_client.session
    assert shopper_client.get("/orders/").status_code == 302


def test_live_refresh_of_an_order_page_leaves_flash_messages_for_the_next_page(shopper_client, shopper, kettle):
    order = place_order(shopper, kettle)
    shopper_client.post("/cart/add/", {"product": kettle.pk, "quantity": 1})  # queues "Added 1 × Kettle..."

    refresh = shopper_client.get(order.get_absolute_url(), headers={"X-Live-Refresh": "1"})
    page = shopper_client.get(order.get_absolute_url())

    assert refresh.status_code == 200
    assert 'id="live-order"' in text(refresh)
    assert "Added 1" not in text(refresh)
    assert "Added 1" in text(page)

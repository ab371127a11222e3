"""Live signals in a real browser against one daphne (issue 10).

Three shoppers hold the same last Burr Grinder: alice, bob (signed in) and a visitor without an
account. Alice buys it. Bob's and the visitor's open cart pages show the line as sold out
without a reload, and a staff member's admin order list toasts the new order and counts it.
"""

import re

import pytest
from playwright.sync_api import expect

from shop import services
from shop.models import Order
from tests.live import APPROVED_CARD, add_to_cart_in_page, in_thread, log_in, pay_in_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CART_LIVE = 'html[data-live-cart="live"]'
STAFF_LIVE = 'html[data-staff-feed="live"]'
MARK_PAGE = "window.__marker = 1"


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"


def test_the_last_item_bought_by_one_shopper_shows_sold_out_in_the_others_open_carts_and_toasts_staff(
    live_daphne, chromium, make_user, make_product
):
    alice, bob = make_user(username="alice"), make_user(username="bob")
    staff = make_user(username="manager", is_staff=True)
    grinder = make_product(name="Burr Grinder", price="89.00", stock=1)
    for user in (alice, bob):
        services.add_to_cart(cart=services.get_cart(user=user, create=True), product=grinder, quantity=1)
    server = live_daphne()

    with chromium.open() as browser:
        # Bob's cart page, open and live.
        bob_page = chromium.new_page(browser.new_context())
        log_in(bob_page, server, bob.username)
        bob_page.goto(f"{server.url}/cart/")
        bob_page.wait_for_selector(CART_LIVE, state="attached")
        bob_page.evaluate(MARK_PAGE)
        # A visitor without an account, with the same item in the session's cart.
        visitor_page = chromium.new_page(browser.new_context())
        add_to_cart_in_page(visitor_page, server, grinder.slug)
        visitor_page.goto(f"{server.url}/cart/")
        visitor_page.wait_for_selector(CART_LIVE, state="attached")
        visitor_page.evaluate(MARK_PAGE)
        # Staff on the admin's order list.
        admin_page = chromium.new_page(browser.new_context())
        log_in(admin_page, server, staff.username, path="/admin/login/")
        admin_page.goto(f"{server.url}/admin/shop/order/")
        admin_page.wait_for_selector(STAFF_LIVE, state="attached")
        admin_page.evaluate(MARK_PAGE)
        chromium.screenshot(bob_page, "bob-cart-before")

        # Alice buys the last one.
        alice_page = chromium.new_page(browser.new_context())
        log_in(alice_page, server, alice.username)
        pay_in_page(alice_page, server, APPROVED_CARD)
        assert re.search(r"/orders/[0-9A-Z]+/$", alice_page.url), alice_page.url

        for page in (bob_page, visitor_page):
            row = page.locator(f'tr[data-product="{grinder.slug}"]')
            expect(row).to_have_attribute("data-line-state", "sold_out")
            expect(row.locator(".stock")).to_have_text("sold out")
            expect(row.locator(".line-live-note")).to_have_text("Burr Grinder is sold out - you have 1 in your cart.")
            expect(page.locator('.toast[data-cart-product][data-state="sold_out"]')).to_contain_text(
                "Burr Grinder is sold out"
            )
            expect(page.locator(".notice-warning .problems")).to_contain_text("Burr Grinder is sold out")
            assert_not_reloaded(page)
        chromium.screenshot(bob_page, "bob-cart-sold-out")
        chromium.screenshot(visitor_page, "visitor-cart-sold-out")

        order = in_thread(lambda: Order.objects.get(user=alice))
        toast = admin_page.locator(f'.staff-toast[data-order-number="{order.number}"]')
        expect(toast).to_contain_text(f"New order {order.number}: €89.00")
        expect(toast).to_contain_text("Paid by alice.")
        expect(admin_page.locator("#live-orders-bar")).to_contain_text("1 new order - refresh")
        assert_not_reloaded(admin_page)
        chromium.screenshot(admin_page, "admin-new-order")

        # Bob's checkout still refuses, as it always did.
        bob_page.goto(f"{server.url}/checkout/")
        expect(bob_page.locator("body")).to_contain_text("Burr Grinder is sold out")

    assert chromium.page_errors == []

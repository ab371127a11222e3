"""The storefront in a real browser against a real daphne (issue #2)."""

import re

import pytest
from playwright.sync_api import expect

from shop.models import Order, Payment
from tests.live import (
    APPROVED_CARD,
    DECLINED_CARD,
    add_to_cart_in_page,
    in_thread,
    log_in,
    pay_in_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ORDER_PAGE = re.compile(r"/orders/(?P<number>[0-9A-Z]+)/$")


def orders_of(user) -> list[tuple[str, str]]:
    return list(Order.objects.filter(user=user).order_by("pk").values_list("number", "status"))


def test_shopper_pays_with_a_good_card_and_a_declined_card_leaves_no_order(
    live_daphne, chromium, shopper, make_product
):
    product = make_product(name="Espresso cup", price="12.50", stock=10)
    server = live_daphne()

    with chromium.open() as browser:
        page = chromium.new_page(browser.new_context())
        log_in(page, server, shopper.username)

        add_to_cart_in_page(page, server, product.slug)
        page.goto(f"{server.url}/cart/")
        expect(page.locator(f'tr[data-product="{product.slug}"]')).to_be_visible()
        with page.expect_navigation():
            page.click('a.button.primary[href="/checkout/"]')
        assert page.url.endswith("/checkout/")
        chromium.screenshot(page, "checkout")

        pay_in_page(page, server, APPROVED_CARD)
        landed = ORDER_PAGE.search(page.url)
        assert landed, f"a paid checkout should land on the order page, not {page.url}"
        number = landed["number"]
        expect(page.locator("[data-order-number]")).to_have_text(number)
        expect(page.locator("[data-order-status]")).to_have_text("Paid")
        chromium.screenshot(page, "order-paid")
        assert in_thread(orders_of, shopper) == [(number, Order.Status.PAID)]

        add_to_cart_in_page(page, server, product.slug)
        pay_in_page(page, server, DECLINED_CARD)
        assert page.url.endswith("/checkout/"), f"a declined card should stay on the checkout, not {page.url}"
        expect(page.locator(".messages")).to_contain_text(re.compile("declined", re.IGNORECASE))
        expect(page.locator("form.checkout-form")).to_be_visible()
        expect(page.locator("[data-cart-count]")).to_have_text("1")
        chromium.screenshot(page, "checkout-declined")
        page.goto(f"{server.url}/cart/")
        expect(page.locator(f'tr[data-product="{product.slug}"]')).to_be_visible()

        # Phone width: the catalog and the checkout fit without sideways scrolling.
        phone = chromium.new_page(
            browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
        )
        log_in(phone, server, shopper.username)
        for step, path in [("phone-catalog", "/"), ("phone-checkout", "/checkout/")]:
            phone.goto(f"{server.url}{path}")
            chromium.screenshot(phone, step)
            overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than a 375px phone screen"

    assert orders_of(shopper) == [(number, Order.Status.PAID)]
    assert Payment.objects.filter(user_id=shopper.pk, status=Payment.Status.DECLINED).count() == 1
    product.refresh_from_db()
    assert product.stock == 9
    assert not chromium.page_errors

"""The storefront in a real browser against a real daphne (issues #2 and #9), with axe-core on every page."""

import json
import re

import pytest
from asgiref.sync import async_to_sync
from django.core.files.base import ContentFile
from playwright.sync_api import expect

from shop import services
from shop.demo_images import product_picture_png
from shop.models import Category, Order, Payment, Product
from shop.payments import Card
from tests.checkout_data import SHIPPING_ADDRESS
from tests.conftest import ON_CI
from tests.live import (
    APPROVED_CARD,
    BASE_DIR,
    DECLINED_CARD,
    OUTPUT_DIR,
    add_to_cart_in_page,
    fill_address_in_page,
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
        # The bank's answer is in the card form, next to what to change.
        expect(page.locator("form.checkout-form [data-payment-error]")).to_contain_text(re.compile("declined", re.I))
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


# Issue 9: a shop people can buy from ---------------------------------------------------------

AXE = BASE_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_REPORT = OUTPUT_DIR / "axe-report.json"
LIVE = '#connection-state[data-state="live"]'
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def photographed_product(name: str, *, price: str, stock: int, category: Category, make_product) -> Product:
    product = make_product(name=name, price=price, stock=stock)
    product.category = category
    product.save(update_fields=["category"])
    picture = ContentFile(product_picture_png(name), name=f"{product.slug}.png")
    return services.set_product_image(product=product, image=picture, alt=f"Illustration of {name}")


def assert_fits(page, width: int) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{page.url} is {overflow}px wider than a {width}px screen"


def assert_photo_loaded(page, selector: str) -> None:
    photo = page.locator(selector).first
    expect(photo).to_be_visible()
    photo.scroll_into_view_if_needed()
    page.wait_for_function(
        "selector => { const img = document.querySelector(selector); return img && img.complete && img.naturalWidth > 0; }",
        arg=selector,
    )


def test_shopper_searches_pays_with_an_address_sees_it_and_cancels_the_order(
    live_daphne, chromium, shopper, make_product, isolated_media_root
):
    brewing = Category.objects.create(name="Brewing", slug="brewing", description="Kettles and drippers.")
    kettle = photographed_product(
        "Pour-over Kettle", price="49.00", stock=5, category=brewing, make_product=make_product
    )
    photographed_product("Ceramic Dripper", price="24.50", stock=0, category=brewing, make_product=make_product)
    # A slow bank, so the Pay button's waiting state can be seen; the photos are this test's.
    server = live_daphne(bank_latency_ms=1500, extra_env={"DJANGO_MEDIA_ROOT": str(isolated_media_root)})

    with chromium.open() as browser:
        context = browser.new_context(**DESKTOP)
        page = chromium.new_page(context)
        log_in(page, server, shopper.username)
        expect(page.locator(".messages")).to_contain_text("You are logged in")
        chromium.screenshot(page, "desktop-catalog")

        # Search from the header box, open the product: its photo is there.
        page.fill("#site-search-q", "kettle")
        with page.expect_navigation():
            page.press("#site-search-q", "Enter")
        assert "/search/?q=kettle" in page.url
        expect(page.locator(".product-name")).to_have_text(["Pour-over Kettle"])
        assert_photo_loaded(page, "img.product-photo")
        with page.expect_navigation():
            page.click("text=Pour-over Kettle")
        assert page.url.endswith(f"/products/{kettle.slug}/")
        assert_photo_loaded(page, "img.product-photo-large")
        expect(page.locator("img.product-photo-large")).to_have_attribute("alt", "Illustration of Pour-over Kettle")
        chromium.screenshot(page, "desktop-product")

        # Pay with an address. The button says the bank is being asked; a second submit sends nothing.
        add_to_cart_in_page(page, server, kettle.slug)
        page.goto(f"{server.url}/checkout/")
        form = page.locator("form.checkout-form")
        expect(form.locator('input[name="email"]')).to_have_value(shopper.email)  # From the account.
        expect(form.locator('input[name="number"]')).not_to_have_attribute("placeholder", re.compile("."))
        fill_address_in_page(form, SHIPPING_ADDRESS)
        form.locator('input[name="number"]').fill(APPROVED_CARD)
        form.locator('input[name="expiry"]').fill("12/30")
        form.locator('input[name="cvc"]').fill("123")
        chromium.screenshot(page, "desktop-checkout")
        # Playwright cannot look into a page whose navigation is under way: the page notes the
        # button's state itself (in sessionStorage, which outlives the navigation) just after the
        # submit, and tries a second submit then.
        page.evaluate(
            """() => {
                const form = document.querySelector("form.checkout-form");
                form.addEventListener("submit", () => setTimeout(() => {
                    if (sessionStorage.getItem("payState")) return;
                    const button = form.querySelector("[data-pay-button]");
                    sessionStorage.setItem("payState", JSON.stringify({disabled: button.disabled, label: button.textContent.trim()}));
                    form.requestSubmit();  // A second try while the bank answers.
                }, 0));
            }"""
        )
        checkout_posts = []
        page.on("request", lambda request: request.method == "POST" and checkout_posts.append(request.url))
        with page.expect_navigation(timeout=15_000):
            form.locator("[data-pay-button]").click()
        waiting = json.loads(page.evaluate("sessionStorage.getItem('payState')"))
        assert waiting == {"disabled": True, "label": "Asking your bank…"}, waiting
        assert len(checkout_posts) == 1, f"the checkout was posted {len(checkout_posts)} times: {checkout_posts}"
        order_url = page.url
        assert ORDER_PAGE.search(order_url), f"a paid checkout should land on the order page, not {order_url}"

        # The order page shows where it goes.
        expect(page.locator("[data-order-status]")).to_have_text("Paid")
        address = page.locator("[data-shipping-address] address")
        for line in ("Alice Martin", "12 Rue de la Paix", "75002 Paris", "France"):
            expect(address).to_contain_text(line)
        expect(page.locator(".timeline")).to_contain_text("Payment received")
        chromium.screenshot(page, "desktop-order")

        # Cancel it (with a confirmation step) while a second tab shows the order: that tab is told live.
        watching = chromium.new_page(context)
        watching.goto(order_url)
        watching.wait_for_selector(LIVE, state="attached")
        page.click("[data-cancel-order]")
        expect(page.locator("h1")).to_contain_text("Cancel order")
        with page.expect_navigation():
            page.click("[data-confirm-cancel]")
        assert page.url == order_url
        expect(page.locator("[data-order-status]")).to_have_text("Cancelled")
        expect(page.locator(".messages")).to_contain_text("is cancelled")
        toast = watching.locator(".toast", has_text="was cancelled")
        expect(toast).to_be_visible()
        expect(watching.locator("[data-order-status]")).to_have_text("Cancelled")  # Refreshed live.
        chromium.screenshot(watching, "desktop-cancelled-toast", full_page=False)

        # The same pages on a phone.
        phone = chromium.new_page(browser.new_context(**PHONE))
        log_in(phone, server, shopper.username)
        for step, path in [("phone-catalog", "/"), ("phone-product", f"/products/{kettle.slug}/")]:
            phone.goto(f"{server.url}{path}")
            chromium.screenshot(phone, step)
            assert_fits(phone, 390)
        add_to_cart_in_page(phone, server, kettle.slug)
        phone.goto(f"{server.url}/checkout/")
        expect(phone.locator('input[name="line1"]')).to_have_value("12 Rue de la Paix")  # The remembered address.
        chromium.screenshot(phone, "phone-checkout")
        assert_fits(phone, 390)
        phone.goto(order_url)
        chromium.screenshot(phone, "phone-order")
        assert_fits(phone, 390)

    order = Order.objects.get()
    assert (order.status, order.shipping_city, order.shipping_country) == (Order.Status.CANCELLED, "Paris", "FR")
    assert list(order.payments.order_by("pk").values_list("kind", "status")) == [
        ("charge", "captured"),
        ("refund", "refunded"),
    ]
    kettle.refresh_from_db()
    assert kettle.stock == 5
    assert not chromium.page_errors


def run_axe(page) -> list[dict]:
    """Run axe-core on the page; return its violations (id, impact, help, the elements concerned)."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5),
        }))"""
    )
    return violations


def test_storefront_pages_pass_axe(live_daphne, chromium, shopper, make_product, isolated_media_root):
    if not AXE.exists():
        message = f"axe-core is not installed ({AXE}): run `make axe` (npm ci)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    coffee = Category.objects.create(name="Coffee", slug="coffee")
    beans = photographed_product("Espresso Beans", price="19.90", stock=3, category=coffee, make_product=make_product)
    photographed_product("Decaf Beans", price="12.90", stock=0, category=coffee, make_product=make_product)
    make_product(name="Knock Box", price="18.50", stock=20)  # No photo: the letter tile.
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=beans, quantity=1)
    order = async_to_sync(services.place_order)(
        user=shopper,
        checkout_token="axe-order-0123456789",
        card=Card(number="4242424242424242", expiry_month=12, expiry_year=2030, cvc="123"),
        shipping=services.ShippingAddress(**SHIPPING_ADDRESS),
    )
    services.add_to_cart(cart=services.get_cart(user=shopper), product=beans, quantity=1)
    server = live_daphne(extra_env={"DJANGO_MEDIA_ROOT": str(isolated_media_root)})
    pages = {
        "catalog": "/",
        "category": "/categories/coffee/",
        "search": "/search/?q=beans",
        "search-empty": "/search/?q=teapot",
        "product": f"/products/{beans.slug}/",
        "cart": "/cart/",
        "checkout": "/checkout/",
        "order": order.get_absolute_url(),
        "cancel": f"{order.get_absolute_url()}cancel/",
        "orders": "/orders/",
        "inbox": "/notifications/",
        "account": "/account/",
    }
    report: dict[str, dict[str, list[dict]]] = {}

    with chromium.open() as browser:
        for width_name, options in (("desktop", DESKTOP), ("phone", PHONE)):
            # axe is injected as a script tag: the test's context may bypass the shop's CSP (the shop's own pages never need to).
            page = chromium.new_page(browser.new_context(bypass_csp=True, **options))
            log_in(page, server, shopper.username)
            for name, path in pages.items():
                page.goto(f"{server.url}{path}")
                page.wait_for_selector(LIVE, state="attached")
                report.setdefault(name, {})[width_name] = run_axe(page)
            # The checkout after a refused card: the error is in the form.
            page.goto(f"{server.url}/checkout/")
            page.locator('input[name="number"]').fill("4000 0000 0000 0002")
            page.locator('input[name="expiry"]').fill("12/30")
            page.locator('input[name="cvc"]').fill("123")
            with page.expect_navigation():
                page.click("[data-pay-button]")
            report.setdefault("checkout-declined", {})[width_name] = run_axe(page)

    AXE_REPORT.write_text(json.dumps(report, indent=2) + "\n")
    found = {
        f"{name} ({width})": violations
        for name, widths in report.items()
        for width, violations in widths.items()
        if violations
    }
    checked = sum(len(widths) for widths in report.values())
    print(
        f"axe-core {AXE.parent.name}: {checked} page loads checked, {len(found)} with violations; report in {AXE_REPORT}"
    )
    assert not found, json.dumps(found, indent=2)

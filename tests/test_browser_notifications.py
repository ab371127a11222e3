"""Live notifications in a real browser against one daphne with the in-memory layer (issue #3)."""

import re
import time

import pytest
from asgiref.sync import async_to_sync
from playwright.sync_api import expect

from notifications.models import Notification
from shop import services
from shop.models import Order
from shop.payments import Card
from tests.live import (
    APPROVED_CARD,
    add_to_cart_in_page,
    in_thread,
    log_in,
    pay_in_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LIVE = '#connection-state[data-state="live"]'
RECONNECTING = '#connection-state[data-state="reconnecting"]'
ORDER_PAGE = re.compile(r"/orders/(?P<number>[0-9A-Z]+)/$")

# Record, in the page, when each toast first appears (Date.now(), comparable with time.time()).
WATCH_TOASTS = """
window.__marker = 1;
window.__toastSeenAt = {};
new MutationObserver(() => {
  for (const toast of document.querySelectorAll('.toast[data-notification-id]')) {
    window.__toastSeenAt[toast.dataset.notificationId] ??= Date.now();
  }
}).observe(document.body, {childList: true, subtree: true});
"""


def toast(notification_id: int) -> str:
    return f'.toast[data-notification-id="{notification_id}"]'


def paid_order(user, product) -> Order:
    """Place and pay an order through the real checkout service (before the browser opens)."""
    services.add_to_cart(cart=services.get_cart(user=user, create=True), product=product, quantity=1)
    card = Card(number="4242424242424242", expiry_month=12, expiry_year=2030, cvc="123")
    return async_to_sync(services.place_order)(user=user, checkout_token=f"setup-{user.pk}-{product.pk}", card=card)


def unread_count(user) -> int:
    return Notification.objects.for_user(user).unread().count()


def open_live_page(chromium, context, server, user, path: str):
    """Sign `user` in, open `path`, wait for the socket to be live and start watching toasts."""
    page = chromium.new_page(context)
    log_in(page, server, user.username)
    page.goto(f"{server.url}{path}")
    page.wait_for_selector(LIVE, state="attached")
    page.evaluate(WATCH_TOASTS)
    return page


def assert_not_reloaded(page, url: str) -> None:
    assert page.url == url
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"


def test_order_paid_in_one_tab_is_toasted_in_the_other_without_reload(live_daphne, chromium, shopper, make_product):
    product = make_product(name="Teapot", price="30.00", stock=5)
    server = live_daphne()

    with chromium.open() as browser:
        context = browser.new_context()  # Two tabs of one browser: they share the session.
        watching = open_live_page(chromium, context, server, shopper, "/")
        watching_url = watching.url
        bell = watching.locator("[data-unread-count]")
        unread_before = int(bell.text_content())

        paying = chromium.new_page(context)
        add_to_cart_in_page(paying, server, product.slug)
        pay_in_page(paying, server, APPROVED_CARD)
        landed_at = time.monotonic()
        landed = ORDER_PAGE.search(paying.url)
        assert landed, f"the checkout should land on the order page, not {paying.url}"
        number = landed["number"]

        shown = watching.wait_for_selector(f'.toast[data-notification-id]:has-text("{number}")')
        toast_seen = time.monotonic()
        notification_id = int(shown.get_attribute("data-notification-id"))
        expect(bell).to_have_text(str(unread_before + 1))
        chromium.screenshot(watching, "toast")
        assert_not_reloaded(watching, watching_url)
        seen_at_ms = watching.evaluate(f"window.__toastSeenAt['{notification_id}']")

        notification = in_thread(Notification.objects.get, pk=notification_id)
        assert notification.recipient_id == shopper.pk
        assert number in notification.url
        assert watching.locator(toast(notification_id)).count() == 1

    print(
        f"commit-to-toast: {(toast_seen - landed_at) * 1000:.0f} ms "
        f"(from the order page loading in the paying tab; the toast appeared "
        f"{seen_at_ms - notification.created_at.timestamp() * 1000:.0f} ms after the row was written)"
    )
    assert Order.objects.get(number=number).status == Order.Status.PAID
    assert not chromium.page_errors


def test_staff_shipping_an_order_in_the_admin_is_toasted_to_the_shopper(
    live_daphne, chromium, shopper, staff, make_product
):
    order = paid_order(shopper, make_product(name="Kettle", price="45.00", stock=3))
    server = live_daphne()

    with chromium.open() as browser:
        shopper_page = open_live_page(chromium, browser.new_context(), server, shopper, order.get_absolute_url())
        shopper_url = shopper_page.url

        admin = chromium.new_page(browser.new_context())
        log_in(admin, server, staff.username, path="/admin/login/")
        admin.goto(f"{server.url}/admin/shop/order/{order.pk}/change/")
        admin.select_option('select[name="status"]', "shipped")
        with admin.expect_navigation():
            admin.click('input[name="_save"]')
        chromium.screenshot(admin, "admin-saved")

        shown = shopper_page.wait_for_selector('.toast[data-notification-id]:has-text("shipped")')
        notification_id = int(shown.get_attribute("data-notification-id"))
        # The open order page follows the change too: status badge and timeline, still no reload.
        expect(shopper_page.locator("[data-order-status]")).to_have_text("Shipped")
        expect(shopper_page.locator(".timeline")).to_contain_text("Shipped")
        chromium.screenshot(shopper_page, "toast-shipped")
        assert_not_reloaded(shopper_page, shopper_url)
        expect(shopper_page.locator("[data-unread-count]")).to_have_text(str(in_thread(unread_count, shopper)))

    order.refresh_from_db()
    assert order.status == Order.Status.SHIPPED
    notification = Notification.objects.get(pk=notification_id)
    assert notification.recipient == shopper
    assert notification.kind == Notification.Kind.ORDER_SHIPPED
    assert not chromium.page_errors


def test_notifications_written_while_the_server_is_down_are_toasted_once_after_reconnect(
    live_daphne,
    chromium,
    shopper,
    make_product,
):
    order = paid_order(shopper, make_product(name="Mug", price="8.00", stock=3))
    server = live_daphne()

    def ship_and_deliver() -> list[int]:
        for status in (Order.Status.SHIPPED, Order.Status.DELIVERED):
            services.change_order_status(order=Order.objects.get(pk=order.pk), status=status)
        return list(
            Notification.objects.for_user(shopper)
            .filter(kind__in=["order_shipped", "order_delivered"])
            .order_by("pk")
            .values_list("pk", flat=True)
        )

    with chromium.open() as browser:
        page = open_live_page(chromium, browser.new_context(), server, shopper, order.get_absolute_url())
        url = page.url

        def while_down() -> list[int]:
            page.wait_for_selector(RECONNECTING, state="attached")
            return in_thread(ship_and_deliver)  # Nobody is connected: these are only rows.

        missed = server.restart(while_down=while_down)
        assert len(missed) == 2

        page.wait_for_selector(LIVE, state="attached", timeout=30_000)
        for notification_id in missed:
            page.wait_for_selector(toast(notification_id))
        page.wait_for_timeout(1500)  # Let any duplicate (a replay and a push) arrive.
        for notification_id in missed:
            assert page.locator(toast(notification_id)).count() == 1, f"notification {notification_id} toasted twice"
        expect(page.locator(toast(missed[0]))).to_contain_text("shipped")
        expect(page.locator(toast(missed[1]))).to_contain_text("delivered")
        expect(page.locator("[data-unread-count]")).to_have_text(str(in_thread(unread_count, shopper)))
        chromium.screenshot(page, "after-reconnect")
        assert_not_reloaded(page, url)

    order.refresh_from_db()
    assert order.status == Order.Status.DELIVERED
    assert not chromium.page_errors

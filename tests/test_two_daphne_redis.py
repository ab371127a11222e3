"""Two daphne processes sharing Redis: a push crosses processes.

A socket is open on server A; the order is paid through server B; the notification
reaches the socket on A through the Redis channel layer. No browser: the websockets
client speaks the protocol and http.client pays.
"""

import asyncio
import http.client
import json
import os
import time
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
import redis
from django.conf import settings
from django.test import Client
from websockets.asyncio.client import connect

from notifications.models import Notification
from shop import services
from shop.models import Order
from tests.checkout_data import shipping_fields
from tests.live import LiveDaphne, in_thread, redis_url_with_db

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# A database of its own on the shared Redis, so other suites and servers do not interfere.
REDIS_TEST_DB = 2
APPROVED_CARD = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}


@pytest.fixture
def shared_redis_url():
    url = redis_url_with_db(os.environ["REDIS_URL"], REDIS_TEST_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


class InputCollector(HTMLParser):
    """Collect the name -> value of every <input> of a page."""

    def __init__(self):
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and attributes.get("name"):
            self.values[attributes["name"]] = attributes.get("value") or ""


def pay_over_http(server: LiveDaphne, session_id: str, card: dict) -> tuple[int, str, float]:
    """Open the checkout page of `server` and submit it; return status, Location and the response's time.time()."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        session_cookie = f"{settings.SESSION_COOKIE_NAME}={session_id}"
        connection.request("GET", "/checkout/", headers={"Cookie": session_cookie})
        page = connection.getresponse()
        html = page.read().decode()
        assert page.status == 200, f"GET /checkout/ answered {page.status}"
        cookies = SimpleCookie()
        for header in page.headers.get_all("Set-Cookie") or []:
            cookies.load(header)
        inputs = InputCollector()
        inputs.feed(html)
        assert inputs.values.get("checkout_token"), "the checkout page has no checkout_token input"
        assert inputs.values.get("csrfmiddlewaretoken"), "the checkout page has no CSRF token"

        form = {
            **shipping_fields(),
            **card,
            "checkout_token": inputs.values["checkout_token"],
            "csrfmiddlewaretoken": inputs.values["csrfmiddlewaretoken"],
        }
        cookie_header = "; ".join([session_cookie] + [f"{name}={morsel.value}" for name, morsel in cookies.items()])
        connection.request(
            "POST",
            "/checkout/",
            body=urlencode(form),
            headers={
                "Cookie": cookie_header,
                "Content-Type": "application/x-www-form-urlencoded",
                # Django checks the Origin (and, over HTTPS, the Referer) against the host.
                "Origin": server.url,
                "Referer": f"{server.url}/checkout/",
            },
        )
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.headers.get("Location", ""), time.time()
    finally:
        connection.close()


async def watch_socket_while_paying(
    server_a: LiveDaphne, server_b: LiveDaphne, session_id: str, *, fill_cart, rounds: int
) -> dict:
    """Hold a socket on A, pay on B `rounds` times; return what A received and when."""
    async with connect(
        f"{server_a.ws_url}/ws/notifications/",
        origin=server_a.url,
        additional_headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_id}"},
        open_timeout=10,
    ) as socket:
        hello = json.loads(await asyncio.wait_for(socket.recv(), timeout=5))
        checkouts = []
        for _round in range(rounds):
            await asyncio.to_thread(in_thread, fill_cart)  # ORM work off the event loop.
            payment = asyncio.ensure_future(asyncio.to_thread(pay_over_http, server_b, session_id, APPROVED_CARD))
            frames = []
            deadline = time.monotonic() + 10
            while len(frames) < 2 and time.monotonic() < deadline:
                if payment.done() and (payment.exception() or payment.result()[0] != 302):
                    break  # The checkout failed: nothing will come; report its answer below.
                try:
                    raw = await asyncio.wait_for(socket.recv(), timeout=0.25)  # Cancelling recv() is safe.
                except TimeoutError:
                    continue
                frames.append((json.loads(raw), time.time()))
            status, location, answered_at = await payment
            checkouts.append({"frames": frames, "status": status, "location": location, "answered_at": answered_at})
    return {"hello": hello, "checkouts": checkouts}


def test_order_paid_on_one_server_is_pushed_to_a_socket_on_the_other(
    live_daphne, shared_redis_url, make_user, make_product
):  # noqa: F811
    shopper = make_user()
    product = make_product(price="12.50", stock=5)
    client = Client()
    client.force_login(shopper)
    session_id = client.cookies[settings.SESSION_COOKIE_NAME].value

    def fill_cart():
        services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=2)

    server_a = live_daphne(name="a", redis_url=shared_redis_url)
    server_b = live_daphne(name="b", redis_url=shared_redis_url)
    # The first checkout pays the servers' one-off costs (first Redis connection, template
    # compilation); the second shows the steady push latency.
    seen = asyncio.run(watch_socket_while_paying(server_a, server_b, session_id, fill_cart=fill_cart, rounds=2))

    assert seen["hello"] == {"type": "hello", "unread": 0, "last_id": 0, "last_seq": 0}
    latencies = []
    for count, checkout in enumerate(seen["checkouts"], start=1):
        assert checkout["status"] == 302, f"checkout on B answered {checkout['status']}:\n{server_b.log_tail()}"
        assert checkout["location"].startswith("/orders/")
        number = checkout["location"].rstrip("/").rsplit("/", 1)[-1]
        order = Order.objects.get(number=number)
        assert order.user == shopper
        assert order.status == Order.Status.PAID

        assert len(checkout["frames"]) == 2, f"A received {checkout['frames']} within 10 s:\n{server_a.log_tail()}"
        (pushed, pushed_at), (unread, _) = checkout["frames"]
        notification = Notification.objects.get(recipient=shopper, url=order.get_absolute_url())
        assert pushed["type"] == "notification"
        assert pushed["id"] == notification.pk
        assert number in pushed["url"] and number in pushed["title"]
        assert unread == {"type": "unread", "count": count}
        latencies.append(
            f"row written on B -> frame on A {(pushed_at - notification.created_at.timestamp()) * 1000:.1f} ms, "
            f"frame vs B's response {(pushed_at - checkout['answered_at']) * 1000:+.1f} ms"
        )
    assert Order.objects.filter(user=shopper).count() == 2
    print(f"two-process push (cold): {latencies[0]}; (warm): {latencies[1]}")

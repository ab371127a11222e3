"""The security baseline (issue 7): headers and policy, error pages, accounts, CSRF, isolation, sockets.

Randomized tests draw from a seed printed in their output; SECURITY_SEED=N replays one.
"""

import json
import os
import random
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import authenticate
from django.core import mail
from django.db import transaction
from django.test import AsyncClient, Client, RequestFactory
from django.urls import URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.views.defaults import server_error

from notifications import services as notification_services
from notifications.consumers import CLOSE_FLOODING, CLOSE_UNAUTHENTICATED, MAX_FRAME_CHARS
from notifications.models import Notification
from shop import services
from shop.asgi import application
from shop.models import Order

BASE_DIR = Path(__file__).resolve().parent.parent
SOCKET_PATH = "/ws/notifications/"
OUR_ORIGIN = b"http://127.0.0.1"
PASSWORD = "a-good-password-123"  # What conftest's make_user gives everyone.
XSS_TITLE = "<img src=x onerror=alert(1)>"
CSRF_PAGE_TEXT = "Your session changed"
LOCKOUT_TEXT = "Too many failed login attempts"


def text(response) -> str:
    return response.content.decode()


def seeded_random(label: str) -> random.Random:
    seed = int(os.environ.get("SECURITY_SEED") or random.randrange(2**32))
    print(f"{label}: SECURITY_SEED={seed}")
    return random.Random(seed)


def logged_in_client(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def notify(user, title: str) -> Notification:
    with transaction.atomic():
        return notification_services.notify(
            recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title, body=f"body of {title}", url="/orders/"
        )


def make_order(user, suffix: str) -> Order:
    return Order.objects.create(user=user, total="12.50", status=Order.Status.PAID, checkout_token=f"sec-{suffix}")


# Headers, policy and `check --deploy` -------------------------------------------------------------------


def csp_directives(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_pages_carry_a_strict_content_security_policy_and_security_headers(client, db):
    response = client.get("/")
    directives = csp_directives(response)
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    # The notifications socket: 'self' (CSP 3) and the allowed hosts spelled out for older browsers.
    assert directives["connect-src"][0] == "'self'"
    assert {"ws://127.0.0.1:*", "wss://127.0.0.1:*", "ws://localhost:*"} <= set(directives["connect-src"])
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
JAVASCRIPT_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.IGNORECASE)


def inline_code(html: str) -> list[str]:
    """Everything the policy would block in `html`: inline scripts, styles, handlers, javascript: URLs."""
    found = []
    for pattern in (INLINE_SCRIPT, INLINE_STYLE, INLINE_HANDLER, JAVASCRIPT_URL):
        found += [match.group(0)[:120] for match in pattern.finditer(html)]
    return found


def test_every_page_passes_the_policy_without_inline_code(client, db, shopper, staff, make_product):
    """The shop's pages and the admin's have no inline script, style attribute or event handler."""
    product = make_product(name="Kettle", stock=5)
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=1)
    order = make_order(shopper, "inline")
    notification = notify(shopper, "Your order shipped")
    anonymous_pages = ["/", f"/products/{product.slug}/", "/cart/", "/accounts/login/", "/accounts/signup/"]
    anonymous_pages += ["/accounts/password-reset/", "/accounts/password-reset/sent/", "/accounts/logout/"]
    anonymous_pages += ["/accounts/reset/done/", "/accounts/reset/MQ/bad-token/", "/admin/login/", "/no-such-page/"]
    shopper_pages = ["/", "/cart/", "/checkout/", "/orders/", order.get_absolute_url(), "/notifications/"]
    shopper_pages += ["/accounts/logout/"]
    staff_pages = ["/admin/", "/admin/shop/product/", f"/admin/shop/product/{product.pk}/change/"]
    staff_pages += ["/admin/shop/order/", f"/admin/shop/order/{order.pk}/change/", "/admin/shop/stockmovement/"]
    staff_pages += [
        "/admin/notifications/notification/",
        f"/admin/notifications/notification/{notification.pk}/change/",
    ]
    staff_pages += ["/admin/auth/user/", f"/admin/auth/user/{shopper.pk}/change/", "/admin/axes/accessattempt/"]
    staff_pages += ["/admin/shop/payment/", "/admin/password_change/"]

    checked = 0
    for user, pages in ((None, anonymous_pages), (shopper, shopper_pages), (staff, staff_pages)):
        browser = Client() if user is None else logged_in_client(user)
        for path in pages:
            response = browser.get(path)
            assert response.status_code in (200, 404), (path, response.status_code)
            assert "Content-Security-Policy" in response.headers, path
            assert inline_code(text(response)) == [], path
            checked += 1
    print(f"{checked} pages checked for inline code")


def test_the_inline_code_detector_finds_what_the_policy_blocks():
    assert inline_code('<p style="color:red">x</p>')
    assert inline_code("<script>alert(1)</script>")
    assert inline_code('<button onclick="go()">x</button>')
    assert inline_code('<a href="javascript:alert(1)">x</a>')
    assert not inline_code('<script type="application/json" id="c">{}</script><script src="/static/a.js"></script>')


def production_environment(**overrides) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_", "REDIS_"))}
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=get_random_string(64),
        DJANGO_ALLOWED_HOSTS="shop.example.com",
        DJANGO_SSL_REDIRECT="true",
        DJANGO_HSTS_SECONDS="31536000",
        DJANGO_SETTINGS_MODULE="shop.settings",
    )
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_with_the_production_environment_is_clean():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_environment())
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_warns_without_the_https_settings():
    """The check above can fail: the same environment without HTTPS redirect and HSTS is not clean."""
    env = production_environment(DJANGO_SSL_REDIRECT="false", DJANGO_HSTS_SECONDS="0")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout
    assert "security.W008" in result.stderr + result.stdout


SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({name: getattr(s, name, None) for name in [
    "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SILENCED_SYSTEM_CHECKS"]}))
"""


def settings_under(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_https_settings_come_from_the_environment():
    production = settings_under(production_environment(DJANGO_SECURE_PROXY_SSL_HEADER="true"))
    assert production["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert production["SECURE_SSL_REDIRECT"] is True
    assert production["SECURE_HSTS_SECONDS"] == 31536000
    assert production["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert production["SECURE_HSTS_PRELOAD"] is False
    assert production["SESSION_COOKIE_SECURE"] is True and production["CSRF_COOKIE_SECURE"] is True

    # The proxy header is trusted only on request; preload only on request (then W021 is not silenced).
    plain = settings_under(production_environment(DJANGO_HSTS_PRELOAD="true", DJANGO_SECURE_COOKIES="false"))
    assert plain["SECURE_PROXY_SSL_HEADER"] is None
    assert plain["SECURE_HSTS_PRELOAD"] is True
    assert "security.W021" not in (plain["SILENCED_SYSTEM_CHECKS"] or [])
    assert plain["SESSION_COOKIE_SECURE"] is False


# Error pages ----------------------------------------------------------------------------------------------


def assert_styled(response, heading: str) -> None:
    body = text(response)
    assert heading in body
    assert "shop/shop.css" in body, "the page should use the shop's layout"
    assert "Traceback" not in body


def test_404_is_the_styled_page(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert_styled(response, "Page not found")


def test_500_is_the_styled_page_and_shows_no_traceback(db, monkeypatch):
    def explode(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("shop.views.CatalogView.get_queryset", explode)
    response = Client(raise_request_exception=False).get("/")
    assert response.status_code == 500
    assert_styled(response, "Something went wrong on our side")
    assert "secret internals" not in text(response)


def test_500_page_renders_without_the_request_or_the_database(db, django_assert_num_queries):
    """The error might be the database itself: the page needs no query, no session, no user."""
    with django_assert_num_queries(0):
        response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert_styled(response, "Something went wrong on our side")


def test_400_is_the_styled_page(client, db):
    response = client.get("/", HTTP_HOST="evil.example")  # Not in ALLOWED_HOSTS: DisallowedHost.
    assert response.status_code == 400
    assert_styled(response, "We could not understand that request")


def test_403_is_the_styled_page(db, django_user_model):
    # Staff, but with no permission on orders: the admin refuses with PermissionDenied.
    clerk = django_user_model.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    response = logged_in_client(clerk).get("/admin/shop/order/")
    assert response.status_code == 403
    assert_styled(response, "You are not allowed to see this page")


def test_csrf_failure_is_the_styled_page_asking_to_reload(shopper):
    response = logged_in_client(shopper, enforce_csrf_checks=True).post("/cart/add/", {"product": 1, "quantity": 1})
    assert response.status_code == 403
    assert_styled(response, CSRF_PAGE_TEXT)
    assert "Reload the page and try again" in text(response)
    assert "CSRF token" not in text(response), "the developers' reason shows only with DEBUG on"
    assert shopper.get_username() in text(response), "rendered with the request: the header shows who is logged in"


# Logout ---------------------------------------------------------------------------------------------------


def test_get_on_logout_shows_a_logout_button_and_keeps_the_session(shopper):
    client = logged_in_client(shopper)
    response = client.get("/accounts/logout/")
    assert response.status_code == 200
    assert re.search(r'<form method="post" action="/accounts/logout/"', text(response))
    assert "Log out?" in text(response)
    assert client.session.get("_auth_user_id") == str(shopper.pk), "a GET must not log anyone out"

    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_get_on_logout_when_logged_out_says_so(client, db):
    response = client.get("/accounts/logout/")
    assert response.status_code == 200
    assert "You are logged out" in text(response)


# Password reset -------------------------------------------------------------------------------------------


def test_login_page_links_to_password_reset(client, db):
    assert '<a href="/accounts/password-reset/">Forgot your password?</a>' in text(client.get("/accounts/login/"))


def test_password_reset_by_email_end_to_end(client, make_user):
    user = make_user(username="forgetful")
    response = client.post("/accounts/password-reset/", {"email": "forgetful@example.com"})
    assert response.status_code == 302 and response.url == "/accounts/password-reset/sent/"
    assert "Check your email" in text(client.get(response.url))

    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["forgetful@example.com"]
    assert email.subject == "Reset your Storefront password"
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", email.body)[1]

    form_url = client.get(link).url  # Django moves the token into the session, out of the URL.
    page = client.get(form_url)
    assert "Choose a new password" in text(page)
    response = client.post(form_url, {"new_password1": "brand-new-pass-777", "new_password2": "brand-new-pass-777"})
    assert response.status_code == 302 and response.url == "/accounts/reset/done/"
    assert "Your password is changed" in text(client.get(response.url))

    # The link worked once.
    assert "This link no longer works" in text(client.get(link, follow=True))
    # The old password no longer logs in; the new one does (through the real login view).
    assert client.post("/accounts/login/", {"username": "forgetful", "password": PASSWORD}).status_code == 200
    response = client.post("/accounts/login/", {"username": "forgetful", "password": "brand-new-pass-777"})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client, db):
    response = client.post("/accounts/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and response.url == "/accounts/password-reset/sent/"
    assert mail.outbox == []


# Login lockout (django-axes) -------------------------------------------------------------------------------


def login(client, path, username, password, address):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    assert LOCKOUT_TEXT in text(response)
    assert f"Try again in {settings.AXES_COOLOFF_TIME.total_seconds() // 60:.0f} minutes" in text(response)
    assert response.headers["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert "shop/shop.css" in text(response)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_login_locks_out_a_username_after_repeated_failures_from_any_address(path, make_user):
    victim = make_user(username=f"victim-{path.strip('/').replace('/', '-')}", is_staff=True)
    bystander = make_user(username="bystander", is_staff=True)
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    for attempt in range(1, limit):
        # A new address each time: only the username's count can reach the limit.
        response = login(client, path, victim.username, "wrong", f"198.51.100.{attempt}")
        assert response.status_code == 200, f"attempt {attempt} of {limit} should still be allowed"
    assert_locked_out(login(client, path, victim.username, "wrong", "198.51.100.99"))

    # The right password no longer helps, from anywhere, for the cool-off time.
    assert_locked_out(login(client, path, victim.username, PASSWORD, "198.51.100.200"))
    assert "_auth_user_id" not in client.session
    # Someone else from that address is not affected.
    assert login(client, path, bystander.username, PASSWORD, "198.51.100.200").status_code == 302


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_login_locks_out_an_address_after_repeated_failures_for_any_username(path, make_user):
    user = make_user(username="roaming", is_staff=True)
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    for attempt in range(1, limit):
        assert login(client, path, f"guess-{attempt}", "wrong", "203.0.113.7").status_code == 200
    assert_locked_out(login(client, path, f"guess-{limit}", "wrong", "203.0.113.7"))

    assert_locked_out(login(client, path, user.username, PASSWORD, "203.0.113.7"))
    # The same account from another address logs in: the address was locked, not the account.
    assert login(client, path, user.username, PASSWORD, "203.0.113.8").status_code == 302


def test_lockout_lifts_after_the_cool_off_time(make_user):
    user = make_user(username="patient")
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = login(client, "/accounts/login/", user.username, "wrong", "192.0.2.10")
    assert_locked_out(response)

    # Time passes: every recorded failure is now older than the cool-off.
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert login(client, "/accounts/login/", user.username, PASSWORD, "192.0.2.10").status_code == 302


def test_successful_logins_never_lock_anyone_out(make_user):
    """The browser tests, the bench and shoppers behind one address log in again and again."""
    users = [make_user(username=f"regular{number}") for number in range(3)]
    client = Client()
    for _round in range(settings.AXES_FAILURE_LIMIT + 2):
        for user in users:
            assert login(client, "/accounts/login/", user.username, PASSWORD, "127.0.0.1").status_code == 302
            client.post("/accounts/logout/")


@pytest.mark.django_db(transaction=True)
async def test_lockout_page_is_served_on_the_async_stack_too(make_user):
    """Under daphne the middleware runs async, where axes calls the lockout page with other arguments."""
    user = await sync_to_async(make_user)(username="async-victim")
    client = AsyncClient()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = await client.post("/accounts/login/", {"username": user.username, "password": "wrong"})
    assert_locked_out(response)


def test_server_side_authenticate_without_a_request_still_checks_the_password(make_user):
    """A shell or the test client's login() has no client to rate-limit: axes must not refuse it."""
    user = make_user(username="scripted")
    assert authenticate(username="scripted", password=PASSWORD) == user
    assert authenticate(username="scripted", password="wrong") is None


# CSRF -------------------------------------------------------------------------------------------------------


@pytest.fixture
def world(make_user, make_product, staff):
    """A shopper with a cart, an order and a notification; staff; a product."""
    shopper = make_user(username="csrf-shopper")
    product = make_product(name="Teapot", stock=10)
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=1)
    return {
        "shopper": shopper,
        "staff": staff,
        "product": product,
        "order": make_order(shopper, "csrf"),
        "notification": notify(shopper, "Your teapot shipped"),
    }


def password_reset_form_url(client, world) -> str:
    client.post("/accounts/password-reset/", {"email": world["shopper"].email}, HTTP_X_CSRFTOKEN=CSRF_SECRET)
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[-1].body)[1]
    return client.get(link).url


CSRF_SECRET = get_random_string(32)

# name: (who, how to build the request: (client, world) -> (path, data, content type or None))
STATE_CHANGING_POSTS = {
    "cart add": ("shopper", lambda c, w: ("/cart/add/", {"product": w["product"].pk, "quantity": 1}, None)),
    "cart update": ("shopper", lambda c, w: ("/cart/update/", {"product": w["product"].pk, "quantity": 2}, None)),
    "cart remove": ("shopper", lambda c, w: ("/cart/remove/", {"product": w["product"].pk}, None)),
    "checkout": (
        "shopper",
        lambda c, w: ("/checkout/", {"number": "4242424242424242", "expiry": "12/40", "cvc": "123"}, None),
    ),
    "notification read (form)": (
        "shopper",
        lambda c, w: ("/notifications/api/read/", {"id": w["notification"].pk}, None),
    ),
    "notification read (JSON)": (
        "shopper",
        lambda c, w: ("/notifications/api/read/", json.dumps({"id": w["notification"].pk}), "application/json"),
    ),
    "notifications read all": ("shopper", lambda c, w: ("/notifications/api/read/", {"all": "1"}, None)),
    "logout": ("shopper", lambda c, w: ("/accounts/logout/", {}, None)),
    "signup": (
        None,
        lambda c, w: (
            "/accounts/signup/",
            {
                "username": "newbie",
                "email": "n@example.com",
                "password1": "Xq9!long-pass",
                "password2": "Xq9!long-pass",
            },
            None,
        ),
    ),
    "login": (None, lambda c, w: ("/accounts/login/", {"username": "csrf-shopper", "password": PASSWORD}, None)),
    "password reset request": (None, lambda c, w: ("/accounts/password-reset/", {"email": "x@example.com"}, None)),
    "password reset confirm": (
        None,
        lambda c, w: (
            password_reset_form_url(c, w),
            {"new_password1": "N3w-pass-ok!", "new_password2": "N3w-pass-ok!"},
            None,
        ),
    ),
    "admin login": (None, lambda c, w: ("/admin/login/", {"username": "staffer", "password": PASSWORD}, None)),
    "admin logout": ("staff", lambda c, w: ("/admin/logout/", {}, None)),
    "admin action": (
        "staff",
        lambda c, w: (
            "/admin/notifications/notification/",
            {"action": "delete_selected", "_selected_action": [w["notification"].pk]},
            None,
        ),
    ),
    "admin change form": (
        "staff",
        lambda c, w: (f"/admin/shop/order/{w['order'].pk}/change/", {"status": "shipped"}, None),
    ),
    "admin password change": (
        "staff",
        lambda c, w: (
            "/admin/password_change/",
            {"old_password": PASSWORD, "new_password1": "a", "new_password2": "a"},
            None,
        ),
    ),
}


def csrf_client(who, world) -> Client:
    client = Client(enforce_csrf_checks=True)
    if who is not None:
        client.force_login(world[who])
    client.cookies["csrftoken"] = CSRF_SECRET  # A token the client knows, for the requests that send it.
    return client


def send(client, path, data, content_type, *, with_token: bool):
    extra = {"HTTP_X_CSRFTOKEN": CSRF_SECRET} if with_token else {}
    if content_type:
        return client.post(path, data, content_type=content_type, **extra)
    return client.post(path, data, **extra)


@pytest.mark.parametrize("name", STATE_CHANGING_POSTS)
def test_state_changing_post_without_a_csrf_token_is_refused(name, world):
    who, build = STATE_CHANGING_POSTS[name]
    client = csrf_client(who, world)
    path, data, content_type = build(client, world)
    unread_before = Notification.objects.unread().count()

    refused = send(client, path, data, content_type, with_token=False)
    assert refused.status_code == 403, f"{name}: {refused.status_code}"
    assert CSRF_PAGE_TEXT in text(refused)
    assert Notification.objects.unread().count() == unread_before

    # The same request with the token gets through: the 403 above was the CSRF check.
    accepted = send(client, path, data, content_type, with_token=True)
    assert accepted.status_code != 403, f"{name} with a token: {accepted.status_code}"
    assert CSRF_PAGE_TEXT not in text(accepted)


def concrete_paths() -> list[str]:
    """One request path for every URL pattern of the project (placeholders filled with sample values)."""

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)

    def fill_group(match):
        alternatives = match[2].split("|")
        return alternatives[0] if len(alternatives) > 1 else "anything/"

    paths = []
    for raw in walk(get_resolver().url_patterns):
        path = raw.replace("^", "").replace("$", "")
        path = re.sub(r"\(\?P<(\w+)>([^)]*)\)", fill_group, path)
        path = re.sub(r"<(?:\w+:)?\w+>", "1", path)
        paths.append("/" + path)
    return paths


def test_every_url_refuses_a_post_without_a_csrf_token(world):
    """No view is exempt: a new URL added later is covered without being listed here."""
    client = csrf_client("staff", world)
    checked = []
    for path in concrete_paths():
        try:
            resolve(path)
        except Resolver404:
            continue
        response = client.post(path, {"anything": "1"})
        assert response.status_code == 403 and CSRF_PAGE_TEXT in text(response), (path, response.status_code)
        checked.append(path)
    print(f"{len(checked)} URL patterns refused a POST without a CSRF token")
    assert len(checked) > 60  # Every storefront, account, notifications and admin pattern resolved.


# Admin only for staff ------------------------------------------------------------------------------------------


def test_admin_is_only_for_staff(world, make_user):
    customer = make_user(username="curious-customer")
    paths = [path for path in concrete_paths() if path.startswith("/admin/")]
    for who, client in (("anonymous", Client()), ("customer", logged_in_client(customer))):
        for path in paths:
            response = client.get(path)
            if path == "/admin/logout/":
                # Not staff: the admin sends them to its index, which sends them to its login.
                assert response.status_code == 302 and response.url == "/admin/", (who, path)
                continue
            if path == "/admin/login/":
                assert response.status_code == 200 and "staff account" not in text(response)
                continue
            assert response.status_code == 302, (who, path, response.status_code)
            assert response.url.startswith("/admin/login/"), (who, path, response.url)

    # A customer's right password does not open the admin.
    client = Client()
    response = client.post("/admin/login/", {"username": customer.username, "password": PASSWORD})
    assert response.status_code == 200
    assert "staff account" in text(response)
    assert client.get("/admin/").status_code == 302
    # Staff gets in (the checks above are about who, not about a broken admin).
    assert logged_in_client(world["staff"]).get("/admin/").status_code == 200


# Rendered notification text is text, never markup -----------------------------------------------------------


def test_notification_markup_is_escaped_in_the_inbox_and_the_admin(shopper, staff):
    notification = notify(shopper, XSS_TITLE)
    escaped = "&lt;img src=x onerror=alert(1)&gt;"

    inbox = text(logged_in_client(shopper).get("/notifications/"))
    assert escaped in inbox
    # Not raw anywhere, the page's json_script configuration ("missed" toasts) included.
    assert "<img src=x" not in inbox

    admin = logged_in_client(staff)
    for path in ("/admin/notifications/notification/", f"/admin/notifications/notification/{notification.pk}/change/"):
        page = text(admin.get(path))
        assert escaped in page, path
        assert "<img src=x" not in page, path


def test_the_socket_client_builds_toasts_and_inbox_items_as_text():
    source = (BASE_DIR / "notifications/static/notifications/notifications.js").read_text()
    source = re.sub(r"/\*.*?\*/|//[^\n]*", "", source, flags=re.DOTALL)  # Comments may name what the code avoids.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, f"notifications.js uses {sink}"
    assert "link.textContent = frame.title" in source
    assert 'body.textContent = frame.body || ""' in source
    assert "title.textContent = frame.title" in source


# Randomized pairs of users never see each other's data (HTTP, the API) ------------------------------------------


@pytest.fixture
def population(make_user):
    """Five shoppers, each with two orders and three notifications (one read)."""
    people = []
    for number in range(5):
        user = make_user(username=f"person{number}")
        orders = [make_order(user, f"{number}-{index}") for index in range(2)]
        notes = [notify(user, f"Private note {index} for person{number}") for index in range(3)]
        Notification.objects.filter(pk=notes[0].pk).update(read_at=timezone.now())
        people.append({"user": user, "orders": orders, "notifications": notes})
    return people


def test_random_pairs_never_see_each_others_orders_or_notifications_over_http(population):
    rng = seeded_random("http isolation")
    for _ in range(8):
        me, other = rng.sample(population, 2)
        client = logged_in_client(me["user"])
        mine = {n.pk for n in me["notifications"]}
        theirs = other["notifications"]

        for order in other["orders"]:
            assert client.get(f"/orders/{order.number}/").status_code == 404
            assert order.number not in text(client.get("/orders/"))
        pages = text(client.get("/orders/")) + text(client.get("/notifications/")) + text(client.get("/"))
        assert "for " + other["user"].username not in pages

        for query in ("", "?after=0", "?after_seq=0", f"?after={min(n.pk for n in theirs) - 1}"):
            listed = client.get(f"/notifications/api/{query}").json()["notifications"]
            assert {item["id"] for item in listed} <= mine, query
        assert client.get("/notifications/api/unread/").json() == {"unread": 2}

        victim = rng.choice(theirs)
        was_read = Notification.objects.get(pk=victim.pk).read_at
        response = client.post("/notifications/api/read/", {"id": victim.pk}, content_type="application/json")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert str(victim.title) not in text(response)
        response = client.post("/notifications/api/read/", {"id": victim.pk, "next": "/notifications/"})
        assert response.status_code == 404
        assert Notification.objects.get(pk=victim.pk).read_at == was_read


# Sockets: anonymous, cross-origin, other users' ids, oversized frames, floods -------------------------------------


@pytest.fixture
async def open_socket():
    """Open sockets through the real ASGI application (origin check, session auth); all closed after."""
    opened = []

    async def open_(user=None, *, origin: bytes | None = OUR_ORIGIN, query: str = ""):
        headers = [] if origin is None else [(b"origin", origin)]
        if user is not None:
            client = await sync_to_async(logged_in_client)(user)
            headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
        communicator = WebsocketCommunicator(application, SOCKET_PATH + query, headers=headers)
        opened.append(communicator)
        communicator.connected, _ = await communicator.connect()
        return communicator

    yield open_
    for communicator in opened:
        await communicator.disconnect()


async def frames_until(communicator, last_type: str) -> list[dict]:
    """Read frames up to and including the first of type `last_type`."""
    frames = []
    for _ in range(500):
        frames.append(await communicator.receive_json_from(timeout=2))
        if frames[-1]["type"] == last_type:
            return frames
    raise AssertionError(f"no {last_type!r} frame in {frames[:5]}...")


@pytest.mark.parametrize("origin", [b"http://evil.example", b"http://127.0.0.1.evil.example", b"null", None])
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_cross_origin_socket_is_refused_even_with_a_valid_session(origin, open_socket, shopper):
    socket = await open_socket(shopper, origin=origin)
    assert not socket.connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_anonymous_socket_is_closed_with_4401_before_any_data(open_socket):
    socket = await open_socket(None)
    assert socket.connected  # Accepted so that the browser sees the code, then closed at once.
    output = await socket.receive_output(timeout=1)
    assert output == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_random_pairs_never_see_each_others_notifications_over_the_socket(open_socket, population):
    rng = seeded_random("socket isolation")
    for _ in range(4):
        me, other = rng.sample(population, 2)
        mine = {n.pk for n in me["notifications"]}
        socket = await open_socket(me["user"], query="?after_seq=0")
        frames = await frames_until(socket, "replayed")
        assert frames[0]["type"] == "hello" and frames[0]["unread"] == len(mine) - 1  # One of them is read.
        assert {frame["id"] for frame in frames if frame["type"] == "notification"} == mine

        # The older resume contract, by id from 0: everything it replays is still this user's.
        await socket.send_json_to({"type": "resume", "after": 0})
        replayed = [await socket.receive_json_from(timeout=2) for _ in mine]
        assert {frame["id"] for frame in replayed} == mine

        victim = rng.choice(other["notifications"])
        for message_type in ("ack", "read"):
            await socket.send_json_to({"type": message_type, "id": victim.pk})
            error = await socket.receive_json_from(timeout=2)
            assert error["type"] == "error" and error["code"] == "not_found", error
        victim_row = await Notification.objects.aget(pk=victim.pk)
        assert victim_row.delivered_at is None
        assert (victim_row.read_at is None) == (victim.pk != other["notifications"][0].pk)

        # A push to the other user reaches their socket, never this one.
        their_socket = await open_socket(other["user"])
        assert (await their_socket.receive_json_from(timeout=2))["type"] == "hello"
        fresh = await sync_to_async(notify)(other["user"], f"Fresh secret for {other['user'].username}")
        other["notifications"].append(fresh)
        pushed = await frames_until(their_socket, "notification")
        assert pushed[-1]["id"] == fresh.pk
        assert await socket.receive_nothing(timeout=0.2)
        await socket.disconnect()
        await their_socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_oversized_frame_is_refused_and_the_socket_stays_usable(open_socket, shopper):
    socket = await open_socket(shopper)
    await socket.receive_json_from()  # hello
    await socket.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * MAX_FRAME_CHARS}))
    error = await socket.receive_json_from(timeout=1)
    assert error["type"] == "error" and error["code"] == "too_large"
    await socket.send_json_to({"type": "ping"})
    assert (await socket.receive_json_from(timeout=1))["type"] == "pong"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_a_flood_of_frames_is_cut_off_with_4429(open_socket, shopper):
    socket = await open_socket(shopper)
    await socket.receive_json_from()  # hello
    for _ in range(400):
        await socket.send_to(text_data='{"type": "nope"}')
    codes, closed_with = [], None
    for _ in range(1000):
        output = await socket.receive_output(timeout=2)
        if output["type"] == "websocket.close":
            closed_with = output["code"]
            break
        codes.append(json.loads(output["text"]).get("code"))
    assert closed_with == CLOSE_FLOODING
    assert "rate_limited" in codes
    print(f"flood: {len(codes)} error frames, then closed with {closed_with}")


# In a real browser: the policy blocks nothing the pages need, and markup in a toast stays text ------------------

WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""
LIVE = '#connection-state[data-state="live"]'


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_pages_and_socket_work_under_the_policy_in_chromium_and_toasts_show_markup_as_text(
    live_daphne, chromium, shopper, staff, make_product
):
    from tests.live import in_thread, log_in

    product = make_product(name="Kettle", stock=5)
    order = make_order(shopper, "browser")
    # Not yet shown by any browser: the first page toasts it from its configuration.
    notification = notify(shopper, XSS_TITLE)
    server = live_daphne()
    violations = {}

    def visit(page, path, *, live=False):
        page.goto(f"{server.url}{path}")
        page.wait_for_load_state("load")
        if live:
            page.wait_for_selector(LIVE, state="attached")
        found = page.evaluate("window.__cspViolations")
        if found:
            violations[path] = found

    with chromium.open() as browser:
        context = browser.new_context()
        context.add_init_script(WATCH_CSP)
        page = chromium.new_page(context)
        log_in(page, server, shopper.username)  # Through the real login view, axes and all.
        # The page after the login toasts the notification no browser has shown (and acks it).
        toast = page.wait_for_selector(f'.toast[data-notification-id="{notification.pk}"]')
        assert toast.query_selector(".toast-link").text_content() == XSS_TITLE
        assert page.evaluate("document.querySelectorAll('#toasts img').length") == 0
        chromium.screenshot(page, "markup-toast")

        for path in (
            "/",
            f"/products/{product.slug}/",
            "/cart/",
            "/orders/",
            order.get_absolute_url(),
            "/notifications/",
        ):
            visit(page, path, live=True)
        inbox_title = page.locator(f'[data-notification-id="{notification.pk}"] .notification-title')
        assert inbox_title.text_content() == XSS_TITLE
        visit(page, "/accounts/logout/")
        chromium.screenshot(page, "logout-page")

        admin = chromium.new_page(browser.new_context())
        admin.add_init_script(WATCH_CSP)
        log_in(admin, server, staff.username, path="/admin/login/")
        for path in (
            "/admin/",
            "/admin/shop/order/",
            f"/admin/shop/order/{order.pk}/change/",
            f"/admin/shop/product/{product.pk}/change/",
            "/admin/shop/product/add/",
            "/admin/notifications/notification/",
            "/admin/axes/accessattempt/",
        ):
            visit(admin, path)
        chromium.screenshot(admin, "admin-product")

        anonymous = chromium.new_page(browser.new_context())
        anonymous.add_init_script(WATCH_CSP)
        # (The live server runs with DEBUG on, where error pages are Django's own: they are checked above.)
        for path in ("/accounts/signup/", "/accounts/password-reset/", "/accounts/login/"):
            visit(anonymous, path)
        chromium.screenshot(anonymous, "login")
        console_before_self_check = list(chromium.console)
        # The watchers see what the policy blocks: an inline style attribute set by a script is refused.
        anonymous.evaluate("document.body.setAttribute('style', 'outline: 1px solid red')")
        assert anonymous.wait_for_function("window.__cspViolations.length > 0").json_value()
        anonymous.wait_for_timeout(200)
        assert any("Content Security Policy" in line for line in chromium.console[len(console_before_self_check) :])

    assert violations == {}
    assert not [line for line in console_before_self_check if "Content Security Policy" in line]
    assert not chromium.page_errors
    assert in_thread(lambda: Notification.objects.get(pk=notification.pk).delivered_at) is not None

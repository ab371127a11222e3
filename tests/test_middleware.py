"""shop.middleware: under ASGI, the middleware hooks that do no I/O run on the event loop (issue 8).

Django runs each MiddlewareMixin hook through sync_to_async under ASGI. Before, a page took
19 thread hops, 16 of them for hooks that only read or set headers and cookies; under a storm
of checkouts each hop also waited its turn on the busy event loop. These tests drive the
ASGI handler (AsyncClient), where the hooks run, not the WSGI one of the sync test client.
Now a page takes 12 hops.
"""

import re

import pytest
from asgiref import sync
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def thread_hops(monkeypatch):
    """The functions an ASGI request ran through sync_to_async, by name."""
    hops: list[str] = []
    real_call = sync.SyncToAsync.__call__

    async def counted_call(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await real_call(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted_call)
    return hops


async def test_a_page_hops_to_a_thread_only_for_session_writes_and_djangos_checked_middleware(thread_hops):
    response = await AsyncClient().get("/")

    assert response.status_code == 200
    middleware_hops = [hop for hop in thread_hops if "Middleware" in hop]
    # The session's save and the messages' (which write into the session), and Django's own
    # security, CSRF and clickjacking middleware, which `check --deploy` must find by name.
    assert sorted(middleware_hops) == [
        "CsrfViewMiddleware.process_request",
        "CsrfViewMiddleware.process_response",
        "CsrfViewMiddleware.process_view",
        "MessageMiddleware.process_response",
        "SecurityMiddleware.process_request",
        "SecurityMiddleware.process_response",
        "SessionMiddleware.process_response",
        "XFrameOptionsMiddleware.process_response",
    ]
    assert len(thread_hops) <= 12, thread_hops


async def test_pages_served_over_asgi_keep_every_security_header():
    response = await AsyncClient().get("/")

    assert response.status_code == 200
    assert "default-src" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]


async def test_a_post_without_its_csrf_token_is_refused_over_asgi():
    response = await AsyncClient(enforce_csrf_checks=True).post("/cart/add/", {"product": 1, "quantity": 1})

    assert response.status_code == 403


async def test_a_login_over_asgi_saves_the_session_and_shows_its_message(make_user):
    from asgiref.sync import sync_to_async

    await sync_to_async(make_user)(username="asgi-shopper", password="a-good-password-123")
    client = AsyncClient(enforce_csrf_checks=True)
    login_page = await client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.content.decode())[1]

    response = await client.post(
        "/accounts/login/",
        {"username": "asgi-shopper", "password": "a-good-password-123", "csrfmiddlewaretoken": token},
    )

    assert response.status_code == 302
    assert client.cookies["sessionid"].value
    page = await client.get(response.headers["Location"])
    assert "Welcome back, asgi-shopper!" in page.content.decode()

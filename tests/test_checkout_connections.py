"""A slow bank holds no database connection.

PostgreSQL serves a bounded number of connections. If a checkout kept the connection of its
reservation for the whole bank wait, a wave of slow checkouts larger than that number would
answer 500 (or wait for the pool) on checkouts and on every other page alike.

The limit is reproduced cheaply, without touching the shared server's settings: a role of
this test's own with CONNECTION LIMIT, used by one daphne whose bank takes 1.5 s. Many more
shoppers than the limit pay at once while the catalog is fetched over and over.
"""

import os
import re
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from shop import services
from shop.models import Order, Payment
from tests.checkout_data import shipping_fields
from tests.faults import Answer, HttpShopper
from tests.live import LiveDaphne, current_database_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

SHOPPERS = 40
CONNECTION_LIMIT = 12
BANK_LATENCY_MS = 3000
# Checkouts arrive over this window, like shoppers do, all inside one bank wait: by its end
# every one of them is waiting for the bank at once.
ARRIVALS_OVER_S = 2.5
HTTP_TIMEOUT_S = 40.0
APPROVED_CARD = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}
ORDER_PATH = re.compile(r"^/orders/[^/]+/$")


@pytest.fixture
def limited_database_url(transactional_db) -> str:
    """DATABASE_URL of the test database for a role allowed only CONNECTION_LIMIT connections.

    Trust authentication (as on the shared server) lets it log in without a password. At the
    end its sessions are ended and the role is dropped with its grants.
    """
    role = f"shop_limited_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {CONNECTION_LIMIT}")
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        cursor.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = current_database_url().replace("postgres://postgres@", f"postgres://{role}@", 1)
    assert role in url, f"cannot put the role into {current_database_url()}"
    try:
        yield url
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            cursor.execute(f"DROP OWNED BY {role}")  # Its grants on this database.
            cursor.execute(f"DROP ROLE {role}")


def shoppers_with_a_cart_line(make_user, make_product) -> list[dict[str, str]]:
    """SHOPPERS signed-in shoppers, each with one line in the cart; return their session cookies."""
    products = [make_product(price="9.90", stock=10 * SHOPPERS) for _ in range(3)]
    cookies = []
    for number in range(SHOPPERS):
        user = make_user()
        services.add_to_cart(cart=services.get_cart(user=user, create=True), product=products[number % 3], quantity=1)
        client = Client()
        client.force_login(user)  # The server shares this process's SECRET_KEY and database.
        cookies.append({settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value})
    return cookies


def open_checkouts(server: LiveDaphne, cookies: list[dict[str, str]]) -> list[tuple[HttpShopper, dict[str, str]]]:
    """GET /checkout/ for each shopper, a few at a time (this is not the wave); return shopper and form."""

    def open_one(cookie: dict[str, str]) -> tuple[HttpShopper, dict[str, str]]:
        shopper = HttpShopper(server.url, cookies=cookie, timeout=HTTP_TIMEOUT_S)
        page = shopper.get("/checkout/")
        assert page.status == 200, f"GET /checkout/ answered {page.status} before the wave"
        return shopper, page.form(action="/checkout/")

    with ThreadPoolExecutor(max_workers=4) as executor:
        return list(executor.map(open_one, cookies, timeout=120))


def fetch_catalog(server: LiveDaphne) -> tuple[int, float]:
    """GET / as an anonymous visitor; return status (0 if no answer) and seconds."""
    started = time.monotonic()
    try:
        answer = HttpShopper(server.url, timeout=HTTP_TIMEOUT_S).get("/")
    except OSError:
        return 0, time.monotonic() - started
    return answer.status, answer.elapsed


def checkout_wave(server: LiveDaphne, checkouts: list[tuple[HttpShopper, dict[str, str]]]) -> dict:
    """POST every checkout within ARRIVALS_OVER_S while the catalog is fetched repeatedly; return what came back.

    Not all in the same millisecond: without a pool, any burst of requests larger than the
    connection limit fails at connect, whatever the checkout does. The bank wait is what
    makes slow checkouts pile up, and that is what this wave measures.
    """
    start_line = threading.Barrier(len(checkouts) + 2, timeout=60)
    wave_over = threading.Event()

    def pay(shopper: HttpShopper, form: dict[str, str], arrival_s: float) -> Answer | Exception:
        start_line.wait()
        time.sleep(arrival_s)
        try:
            return shopper.post("/checkout/", {**form, **shipping_fields(), **APPROVED_CARD})
        except OSError as error:  # A timeout or a dropped connection: reported with the statuses.
            return error

    def sample_catalog() -> list[tuple[int, float]]:
        start_line.wait()
        samples = []
        while not wave_over.is_set() and len(samples) < 1000:
            samples.append(fetch_catalog(server))
            time.sleep(0.05)
        return samples

    with ThreadPoolExecutor(max_workers=len(checkouts) + 1) as executor:
        payments = [
            executor.submit(pay, shopper, form, ARRIVALS_OVER_S * number / len(checkouts))
            for number, (shopper, form) in enumerate(checkouts)
        ]
        catalog = executor.submit(sample_catalog)
        start_line.wait()
        started = time.monotonic()
        answers = [payment.result(timeout=HTTP_TIMEOUT_S + 30) for payment in payments]
        wave_s = time.monotonic() - started
        wave_over.set()
        samples = catalog.result(timeout=HTTP_TIMEOUT_S + 30)
    return {"answers": answers, "wave_s": wave_s, "catalog": samples}


def describe(answer: Answer | Exception) -> str:
    return str(answer.status) if isinstance(answer, Answer) else type(answer).__name__


@pytest.mark.parametrize("pool", [False, True], ids=["plain-connections", "psycopg-pool"])
def test_more_slow_checkouts_than_database_connections_all_pay_and_the_catalog_stays_fast(
    live_daphne, limited_database_url, make_user, make_product, pool
):
    cookies = shoppers_with_a_cart_line(make_user, make_product)
    server = live_daphne(
        name=f"limited-{'pool' if pool else 'plain'}",
        bank_latency_ms=BANK_LATENCY_MS,
        extra_env={"DATABASE_URL": limited_database_url, "DATABASE_POOL": "true" if pool else "false"},
    )
    try:
        checkouts = open_checkouts(server, cookies)
        idle = [fetch_catalog(server) for _ in range(10)]
        wave = checkout_wave(server, checkouts)
    finally:
        server.stop()  # Before the role's sessions are ended and the role dropped.

    answers, catalog = wave["answers"], wave["catalog"]
    statuses = Counter(describe(answer) for answer in answers)
    catalog_statuses = Counter(str(status) for status, _ in catalog)
    idle_ms = [seconds * 1000 for _, seconds in idle]
    wave_ms = [seconds * 1000 for _, seconds in catalog] or [0.0]
    checkout_ms = [answer.elapsed * 1000 for answer in answers if isinstance(answer, Answer)] or [0.0]
    log = server.log_tail(100_000)
    print(
        f"\n[{'pool' if pool else 'plain'}] {SHOPPERS} checkouts, role limit {CONNECTION_LIMIT} connections, "
        f"bank {BANK_LATENCY_MS} ms: wave {wave['wave_s']:.2f} s = {wave['wave_s'] * 1000 / BANK_LATENCY_MS:.1f} x "
        f"the bank; checkout answers {dict(statuses)} in p50/max "
        f"{statistics.median(checkout_ms):.0f}/{max(checkout_ms):.0f} ms; catalog during the wave {dict(catalog_statuses)} "
        f"p50/max {statistics.median(wave_ms):.0f}/{max(wave_ms):.0f} ms vs idle "
        f"p50/max {statistics.median(idle_ms):.0f}/{max(idle_ms):.0f} ms; 'too many connections' in the log "
        f"{log.count('too many connections')} times"
    )

    failed = [describe(answer) for answer in answers if not isinstance(answer, Answer) or answer.status >= 500]
    assert not failed, (
        f"{len(failed)} of {SHOPPERS} checkouts failed ({dict(statuses)}); "
        f"'too many connections' appears {log.count('too many connections')} times in the server log"
    )
    wrong = [(answer.status, answer.location) for answer in answers if not ORDER_PATH.match(answer.location)]
    assert not wrong, f"checkouts that did not redirect to their order: {wrong[:5]}"
    assert all(answer.status == 302 for answer in answers), dict(statuses)
    numbers = {answer.location.rstrip("/").rsplit("/", 1)[-1] for answer in answers}
    assert len(numbers) == SHOPPERS
    assert Order.objects.filter(number__in=numbers, status=Order.Status.PAID).count() == SHOPPERS
    assert (
        Payment.objects.filter(order__number__in=numbers, kind="charge", status=Payment.Status.CAPTURED).count()
        == SHOPPERS
    )

    assert catalog, "no catalog page was fetched during the wave"
    assert set(catalog_statuses) == {"200"}, f"catalog pages during the wave: {dict(catalog_statuses)}"
    # Loose bounds on purpose (a catalog page takes tens of milliseconds, a checkout the bank's
    # time and a little): a page that took as long as a bank answer waited for a connection a
    # checkout held, and a checkout that took three waited for other shoppers' banks.
    assert max(wave_ms) < BANK_LATENCY_MS, f"the slowest catalog page during the wave took {max(wave_ms):.0f} ms"
    assert max(checkout_ms) < 3 * BANK_LATENCY_MS, f"the slowest checkout took {max(checkout_ms):.0f} ms"

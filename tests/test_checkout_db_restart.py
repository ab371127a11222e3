"""The database drops while the bank thinks: the payment is never lost and never a bare 500.

A shop of its own (own PostgreSQL cluster, migrated and seeded, one daphne with a slow
bank) takes a checkout; while the bank is waiting, the cluster goes down. The capture must
be retried on a fresh connection, or left for reconciliation; either way the shopper gets a
friendly page, the order ends PAID with one captured Payment, and the bank holds one charge.

Everything the test reads comes from the shop's own tools (pages, `manage.py shell` with
the models, `manage.py reconcile_payments`) and the bank's ledger file.
"""

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.checkout_data import shipping_fields
from tests.faults import Answer, HttpShopper, PostgresCluster
from tests.live import BASE_DIR, LiveDaphne

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.fault,
]

BANK_LATENCY_MS = 3000
APPROVED_CARD = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}
CUSTOMER, PASSWORD = "customer1", "shop-demo-2026"  # What seed_demo creates.
TEMPLATE_DATABASE = "shop_template"
SETTLE_WITHIN_S = 15.0
DATABASE_NUMBERS = itertools.count(1)

# Prints the shop's orders and their payments, read through the models, as one JSON line.
ORDERS_SCRIPT = """
import json
from shop.models import Order, Payment
orders = [
    {
        "number": order.number,
        "status": order.status,
        "payments": [
            {"kind": p.kind, "status": p.status, "idempotency_key": p.idempotency_key}
            for p in Payment.objects.filter(order=order)
        ],
    }
    for order in Order.objects.order_by("pk")
]
unattached = list(Payment.objects.filter(order=None).values_list("status", flat=True))
print("ORDERS " + json.dumps({"orders": orders, "unattached_payments": unattached}))
"""


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python manage.py ...` against the database named by env's DATABASE_URL."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def shop_environment(database_url: str, ledger: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        DATABASE_URL=database_url,
        DATABASE_POOL="false",
        SANDBOX_BANK_LEDGER=str(ledger),
        # Reconciliation asks the bank about a key it has answered already: no need to wait.
        SANDBOX_BANK_LATENCY_MS="50",
        PYTHONUNBUFFERED="1",
    )
    return env


def read_orders(env: dict[str, str]) -> dict:
    output = manage("shell", "-c", ORDERS_SCRIPT, env=env, timeout=60).stdout
    line = next((line for line in output.splitlines() if line.startswith("ORDERS ")), None)
    assert line is not None, f"the orders script printed nothing useful:\n{output[-2000:]}"
    return json.loads(line.removeprefix("ORDERS "))


def ledger_charges(ledger: Path) -> list[tuple[str, str]]:
    """(idempotency key, outcome) of every charge the sandbox bank recorded."""
    assert ledger.exists(), f"the bank kept no ledger at {ledger}"
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10) as connection:
        return connection.execute(
            "SELECT idempotency_key, outcome FROM sandbox_bank_ledger WHERE kind = 'charge' ORDER BY rowid"
        ).fetchall()


@pytest.fixture(scope="module")
def template_database(own_postgres: PostgresCluster, tmp_path_factory) -> str:
    """A migrated, seeded database each test copies (CREATE DATABASE ... TEMPLATE: fast)."""
    started = time.monotonic()
    own_postgres.execute(f"CREATE DATABASE {TEMPLATE_DATABASE}")
    env = shop_environment(own_postgres.url(TEMPLATE_DATABASE), tmp_path_factory.mktemp("seed") / "ledger.sqlite3")
    manage("migrate", "--noinput", env=env)
    manage("seed_demo", "--customers", "2", "--products", "3", "--stock", "50", env=env)
    print(f"\nown cluster on port {own_postgres.port}: migrated and seeded in {time.monotonic() - started:.1f} s")
    return TEMPLATE_DATABASE


@dataclass
class OwnShop:
    server: LiveDaphne
    database: str
    ledger: Path
    env: dict[str, str] = field(repr=False)  # The whole environment: kept out of failure reports.


@pytest.fixture
def shop(own_postgres: PostgresCluster, template_database: str, tmp_path):
    """A database copied from the template, a ledger file, and one daphne on them with a slow bank."""
    if not own_postgres.is_running():
        own_postgres.start()  # A previous test left it down.
    database = f"shop_{next(DATABASE_NUMBERS)}"
    own_postgres.execute(
        f"DROP DATABASE IF EXISTS {database}", f"CREATE DATABASE {database} TEMPLATE {template_database}"
    )
    ledger = tmp_path / "sandbox-bank.sqlite3"
    env = shop_environment(own_postgres.url(database), ledger)
    server = LiveDaphne(
        name=f"db-restart-{database}",
        bank_latency_ms=BANK_LATENCY_MS,
        extra_env={"DATABASE_URL": env["DATABASE_URL"], "DATABASE_POOL": "false", "SANDBOX_BANK_LEDGER": str(ledger)},
    )
    try:
        server.start()
        yield OwnShop(server=server, database=database, ledger=ledger, env=env)
    finally:
        server.stop()
        if not own_postgres.is_running():
            own_postgres.start()
        own_postgres.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def wait_for_reservation(cluster: PostgresCluster, database: str, timeout: float = 5.0) -> float:
    """Return once the checkout's PENDING order exists (the bank is being asked); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with psycopg.connect(cluster.url(database), connect_timeout=2) as connection:
            if connection.execute("SELECT count(*) FROM shop_order").fetchone()[0]:
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no order was reserved within {timeout} s of the POST")


def pay_while_the_database_drops(shop: OwnShop, cluster: PostgresCluster, *, down_for: float) -> dict:
    """Sign in, fill the cart, POST the checkout; while the bank waits, take the cluster down for `down_for` s."""
    server: LiveDaphne = shop.server
    shopper = HttpShopper(server.url, timeout=60)
    shopper.sign_in(CUSTOMER, PASSWORD)
    catalog = shopper.get("/")
    slug = re.search(r'href="/products/([^/"]+)/"', catalog.body)
    assert slug, "the catalog lists no product"
    product_page = shopper.get(f"/products/{slug.group(1)}/")
    added = shopper.post("/cart/add/", {**product_page.form(action="/cart/add/"), "quantity": "1"})
    assert added.status == 302, f"add to cart answered {added.status}"
    checkout_form = shopper.get("/checkout/").form(action="/checkout/")
    assert checkout_form.get("checkout_token"), "the checkout page has no checkout_token"

    result: dict = {}

    def pay() -> None:
        try:
            result["answer"] = shopper.post("/checkout/", {**checkout_form, **shipping_fields(), **APPROVED_CARD})
        except Exception as error:  # Reported by the assertion below.
            result["error"] = error

    payment = threading.Thread(target=pay, name="pay", daemon=True)
    posted = time.monotonic()
    payment.start()
    reserved_after = wait_for_reservation(cluster, shop.database)
    dropped_at = time.monotonic() - posted
    restart = cluster.restart(down_for=down_for)
    back_at = time.monotonic() - posted
    payment.join(timeout=90)
    assert not payment.is_alive(), "the checkout POST did not answer within 90 s"
    assert "error" not in result, f"the checkout POST failed: {result.get('error')!r}\n{server.log_tail()}"
    answer: Answer = result["answer"]
    timings = {
        "reserved_s": reserved_after,
        "db_down_at_s": dropped_at,
        "db_back_at_s": back_at,
        "stop_s": restart["stop_s"],
        "start_s": restart["start_s"],
        "post_answered_s": answer.elapsed,
    }
    return {"shopper": shopper, "answer": answer, "timings": timings}


def last_exception(server: LiveDaphne) -> str:
    """The last exception line of the server's log, e.g. 'django.db.utils.OperationalError: ...'."""
    lines = [line for line in server.log_tail(400).splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return lines[-1] if lines else "(no exception in the server log)"


def assert_friendly(answer: Answer, server: LiveDaphne) -> None:
    assert answer.status < 500, f"{answer.method} {answer.path} answered {answer.status}: {last_exception(server)}"
    assert "Traceback" not in answer.body, f"{answer.method} {answer.path} shows a traceback"


def settle(shop: OwnShop) -> tuple[dict, float, bool]:
    """Poll the shop's orders until the order is PAID (at most SETTLE_WITHIN_S), else reconcile once.

    Return the orders, the seconds polled, and whether reconcile_payments had to run.
    """
    started = time.monotonic()
    while True:
        orders = read_orders(shop.env)
        if orders["orders"] and all(order["status"] == "paid" for order in orders["orders"]):
            return orders, time.monotonic() - started, False
        if time.monotonic() - started > SETTLE_WITHIN_S:
            break
        time.sleep(1.0)
    manage("reconcile_payments", "--older-than", "0", env=shop.env, timeout=120)
    return read_orders(shop.env), time.monotonic() - started, True


@pytest.mark.parametrize(
    "down_for",
    [
        pytest.param(0.5, id="back-before-the-bank-answers"),
        # Down from the reservation until 1.5 s after the bank answered: the first capture
        # attempt fails and must be retried (or left for reconciliation), never lost.
        pytest.param(BANK_LATENCY_MS / 1000 + 1.5, id="down-when-the-bank-answers"),
        # Down for longer than the capture's retries (about 8 s): the shopper gets the
        # "being confirmed" page (202, rendered without the database) and reconciliation
        # records the charge once the database is back.
        pytest.param(BANK_LATENCY_MS / 1000 + 11, id="down-past-the-capture-retries"),
    ],
)
def test_database_restart_during_the_bank_wait_loses_no_payment(own_postgres, shop, down_for):
    server: LiveDaphne = shop.server
    paid = pay_while_the_database_drops(shop, own_postgres, down_for=down_for)
    answer: Answer = paid["answer"]

    print(
        f"\n[{down_for:.1f} s outage] "
        + ", ".join(f"{name} {value:.2f}" for name, value in paid["timings"].items())
        + f"; POST -> {answer.status} {answer.location}"
    )
    assert_friendly(answer, server)
    pages = paid["shopper"].follow(answer)
    for page in pages:
        assert_friendly(page, server)
    landing = pages[-1] if pages else answer
    assert 200 <= landing.status < 300, f"after the checkout the shopper lands on a {landing.status} ({landing.path})"
    says_paid = re.search(r"data-order-status[^>]*>\s*Paid\s*<", landing.body) is not None
    says_confirming = "being confirmed" in landing.body.lower()
    assert says_paid or says_confirming, (
        f"the page after the checkout ({landing.path}) says neither that the order is paid nor that the payment "
        f"is being confirmed:\n{landing.body[:1500]}"
    )

    orders, settle_s, reconciled = settle(shop)
    print(
        f"[{down_for:.1f} s outage] landing page {landing.path} says "
        + ("PAID" if says_paid else "'being confirmed'")
        + f"; settled after {settle_s:.1f} s of polling"
        + (" (needed reconcile_payments)" if reconciled else "")
    )
    assert len(orders["orders"]) == 1, f"expected one order, found {orders}"
    order = orders["orders"][0]
    assert order["status"] == "paid", f"the order is {order['status']} even after reconciliation: {orders}"
    captured = [p for p in order["payments"] if p["kind"] == "charge" and p["status"] == "captured"]
    assert len(captured) == 1 and len(order["payments"]) == 1, f"expected one captured charge: {order['payments']}"
    assert orders["unattached_payments"] == [], f"payments without an order: {orders['unattached_payments']}"

    charges = ledger_charges(shop.ledger)
    moved_money = [key for key, outcome in charges if outcome == "charged"]
    assert moved_money == [f"charge:{captured[0]['idempotency_key']}"], f"the bank's charges: {charges}"

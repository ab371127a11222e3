"""Fixtures shared by the whole suite.

Tests that need a real service carry a marker (postgres, redis, browser). Where the
service is missing they are skipped with the reason, except under CI=true, where a
missing service is a failure: CI must never go green by skipping its real checks.
"""

import os
import shutil
import socket
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from shop import payments
from shop.models import Product

# The live-server and browser fixtures (live_daphne, chromium) live in tests/live.py; the fault
# tests' own servers (own_postgres, own_redis) in tests/faults.py.
pytest_plugins = ["tests.live", "tests.faults"]

ON_CI = os.environ.get("CI", "").lower() == "true"
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def pytest_configure(config):
    OUTPUT_DIR.mkdir(exist_ok=True)


def _redis_problem() -> str | None:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        return "REDIS_URL is not set"
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=2):
            return None
    except OSError as error:
        return f"Redis at {url} is unreachable: {error}"


def _postgres_problem() -> str | None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "DATABASE_URL does not point at PostgreSQL"
    return None


def _browser_problem() -> str | None:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


SERVICE_CHECKS = {"postgres": _postgres_problem, "redis": _redis_problem, "browser": _browser_problem}


def pytest_collection_modifyitems(config, items):
    problems = {name: check() for name, check in SERVICE_CHECKS.items()}
    for item in items:
        for name, problem in problems.items():
            if problem and item.get_closest_marker(name):
                if ON_CI:
                    item.user_properties.append(("missing_service", f"{name}: {problem}"))
                else:
                    item.add_marker(pytest.mark.skip(reason=f"{name}: {problem}"))


def pytest_runtest_setup(item):
    missing = [value for key, value in item.user_properties if key == "missing_service"]
    if missing:
        pytest.fail(f"CI=true but a service this test needs is missing: {'; '.join(missing)}", pytrace=False)


@pytest.fixture(autouse=True)
def fast_password_hashing(request, settings):
    """Hash test passwords with MD5: the real hasher costs ~0.4 s a user.

    Browser tests keep the real hashers: they sign in through a live server, another
    process, which only knows the project's settings.
    """
    if request.node.get_closest_marker("browser") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def close_worker_thread_connections():
    """Close the database connections of asgiref's worker thread after an async test.

    The async ORM runs queries in that long-lived thread, whose connection outlives the
    test; left open, PostgreSQL refuses to drop the test database at the end.
    """
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def in_memory_layer(settings):
    """A fresh in-memory channel layer: no group or queued message survives from another test."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def instant_bank(settings, tmp_path):
    """The sandbox bank answers at once in tests (tests that study latency set their own).

    Each test gets a ledger of its own, so no charge of another test (or run) is visible.
    """
    settings.SANDBOX_BANK_LATENCY_MS = 0
    settings.SANDBOX_BANK_LEDGER = str(tmp_path / "sandbox-bank.sqlite3")
    payments.get_gateway.cache_clear()
    yield
    payments.get_gateway.cache_clear()


@pytest.fixture(autouse=True)
def isolated_media_root(settings, tmp_path):
    """Uploaded and generated files (product photos) go to the test's own folder, never the project's media/."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def bank():
    """The sandbox bank the checkout will use, to inspect its ledger."""
    return payments.get_gateway()


@pytest.fixture
def make_product(db):
    counter = iter(range(1, 10_000))

    def make(*, name=None, price="10.00", stock=10, is_active=True) -> Product:
        number = next(counter)
        name = name or f"Product {number}"
        return Product.objects.create(
            name=name,
            slug=f"product-{number}-{name.lower().replace(' ', '-')}",
            price=Decimal(price),
            stock=stock,
            is_active=is_active,
        )

    return make


@pytest.fixture
def make_user(db, django_user_model):
    counter = iter(range(1, 10_000))

    def make(*, username=None, is_staff=False, password="a-good-password-123"):
        username = username or f"shopper{next(counter)}"
        return django_user_model.objects.create_user(
            username=username,
            email=f"{username}@example.com",
            password=password,
            is_staff=is_staff,
            is_superuser=is_staff,
        )

    return make


@pytest.fixture
def shopper(make_user):
    return make_user(username="alice")


@pytest.fixture
def other_shopper(make_user):
    return make_user(username="bob")


@pytest.fixture
def staff(make_user):
    return make_user(username="staffer", is_staff=True)

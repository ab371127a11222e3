"""Real servers and a real browser for the end-to-end tests.

LiveDaphne runs `daphne shop.asgi:application` as a child process on a free port of
127.0.0.1, pointed at the current test database (committed data only: tests using it
need django_db(transaction=True)). Chromium is Debian's, driven by Playwright.

Two traps shape the helpers:
- Inside `with sync_playwright():` an event loop runs in the main thread and the ORM
  refuses to work there. Create data before opening the browser, and inside it use
  in_thread() for database work; after the `with` block the ORM works again.
- PR_SET_PDEATHSIG fires when the *thread* that forked the child ends: servers are
  started from the test's main thread, never from a worker thread.

The fixtures here are imported by the browser test modules (`from tests.live import ...`).
"""

import contextlib
import ctypes
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from tests.checkout_data import SHIPPING_ADDRESS

BASE_DIR = Path(__file__).resolve().parent.parent
OUTPUT_DIR = BASE_DIR / "test-output"
SCREENSHOT_DIR = OUTPUT_DIR / "screenshots"
DAPHNE = Path(sys.executable).parent / "daphne"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOPPER_PASSWORD = "a-good-password-123"  # The password conftest's make_user gives everyone.

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # The parent died before prctl took effect.
            os._exit(1)

    return preexec


def free_port() -> int:
    """Return a port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def current_database_url() -> str:
    """DATABASE_URL of the database this test process uses (the test database once set up)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise RuntimeError("a live server cannot see an in-memory SQLite database; give TEST a file NAME")
        return f"sqlite:///{Path(name).resolve()}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = quote(db["HOST"] or "127.0.0.1", safe="")
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"no DATABASE_URL for engine {db['ENGINE']}")


def redis_url_with_db(url: str, db: int) -> str:
    """Return the Redis URL `url` pointed at database number `db` (redis:// or rediss:// only)."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        # Never guess: the caller flushes the database this returns.
        raise ValueError(f"cannot choose a database in {url!r}; use a redis:// URL")
    return urlunsplit(parts._replace(path=f"/{db}"))


class LiveDaphne:
    """One daphne process serving shop.asgi:application on 127.0.0.1.

    `redis_url=None` gives the child the in-memory channel layer (REDIS_URL removed).
    `extra_env` is applied last: it can point the server elsewhere (DATABASE_URL) or tune it.
    """

    startup_timeout = 20.0

    def __init__(
        self,
        *,
        name: str = "daphne",
        redis_url: str | None = None,
        bank_latency_ms: int = 50,
        extra_env: dict[str, str] | None = None,
    ):
        self.name = name
        self.redis_url = redis_url
        self.bank_latency_ms = bank_latency_ms
        self.extra_env = dict(extra_env or {})
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            # The settings the tests run with (shop.settings unless overridden with --ds).
            DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "shop.settings"),
            DATABASE_URL=current_database_url(),
            SANDBOX_BANK_LATENCY_MS=str(self.bank_latency_ms),
            # The test's own ledger: the server's charges are the ones the test inspects.
            SANDBOX_BANK_LEDGER=str(settings.SANDBOX_BANK_LEDGER),
            DJANGO_DEBUG="true",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            # Sessions made by this process (force_login) and by each server must be readable by
            # all of them: a random per-process key (the DEBUG default) would not be shared.
            DJANGO_SECRET_KEY=settings.SECRET_KEY,
            PYTHONUNBUFFERED="1",
        )
        env.pop("DJANGO_CSRF_TRUSTED_ORIGINS", None)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        else:
            env.pop("REDIS_URL", None)
        env.update(self.extra_env)
        return env

    def start(self) -> "LiveDaphne":
        """Start on a free port (or on the previous one after stop()); return once GET / is 200."""
        keep_port = self.port is not None
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port()
            problem = self._spawn_and_wait()
            if problem is None:
                return self
            if "Address already in use" in problem and not keep_port:
                continue  # Someone took the port between probe and bind: pick another.
            if "Address already in use" in problem and keep_port:
                time.sleep(0.5)
                continue
            break
        raise RuntimeError(f"{self.name} did not start on port {self.port}: {problem}")

    def _spawn_and_wait(self) -> str | None:
        OUTPUT_DIR.mkdir(exist_ok=True)
        self.log_path = OUTPUT_DIR / f"daphne-{os.getpid()}-{self.name}-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by stop()
        log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {self.name} on {self.port}\n".encode())
        log.flush()
        self._log = log
        self.process = subprocess.Popen(
            [str(DAPHNE), "-b", "127.0.0.1", "-p", str(self.port), "shop.asgi:application"],
            cwd=BASE_DIR,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                return f"exited with code {self.process.returncode}:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=2) as response:
                    if response.status == 200:
                        return None
                    last = f"GET / answered {response.status}"
            except urllib.error.HTTPError as error:
                last = f"GET / answered {error.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                last = f"GET / failed: {error}"
            time.sleep(0.1)
        self.stop()
        return f"not ready after {self.startup_timeout:.0f} s ({last}):\n{self.log_tail()}"

    def stop(self) -> None:
        """Terminate the process (kill it after 5 s); the port is kept for a later start()."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_log()

    def restart(self, *, while_down: Callable[[], object] | None = None) -> object:
        """Stop, run `while_down` (if given) while nothing listens, start on the same port.

        Return what `while_down` returned.
        """
        self.stop()
        result = while_down() if while_down is not None else None
        self.start()
        return result

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()


@pytest.fixture
def live_daphne(transactional_db) -> Iterator[Callable[..., LiveDaphne]]:
    """Start daphne servers on the test database: `server = live_daphne(redis_url=None)`.

    Every server started is stopped before the test database is flushed.
    """
    servers: list[LiveDaphne] = []

    def start(
        *,
        name: str | None = None,
        redis_url: str | None = None,
        bank_latency_ms: int = 50,
        extra_env: dict[str, str] | None = None,
    ) -> LiveDaphne:
        server = LiveDaphne(
            name=name or f"daphne{len(servers) + 1}",
            redis_url=redis_url,
            bank_latency_ms=bank_latency_ms,
            extra_env=extra_env,
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


# Database work while a browser is open --------------------------------------------------


def in_thread(function: Callable, /, *args, **kwargs):
    """Run ORM work in a worker thread (no event loop there) and return its result."""

    def run():
        from django.db import connections

        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(run).result(timeout=60)


# Browser ---------------------------------------------------------------------------------


class Chromium:
    """Open Debian's chromium for one test; name screenshots after the test; collect page errors."""

    default_timeout_ms = 15_000

    def __init__(self, test_name: str):
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        for stale in SCREENSHOT_DIR.glob(f"{glob.escape(self.test_name)}-*"):
            stale.unlink(missing_ok=True)  # From an earlier run: a failure shot would mislead.
        self.screenshots: list[Path] = []
        self.page_errors: list[str] = []
        self.console: list[str] = []
        self._pages: list = []

    @contextlib.contextmanager
    def open(self):
        """Yield a Playwright Browser; the ORM is unusable in this thread until it closes."""
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield browser
            except BaseException:
                for number, page in enumerate(self._pages, start=1):
                    with contextlib.suppress(Exception):
                        self.screenshot(page, f"failure-page{number}")
                raise
            finally:
                self._write_console_log()
                browser.close()

    def new_page(self, context):
        """Open a page in `context` whose errors and console output are recorded."""
        page = context.new_page()
        page.set_default_timeout(self.default_timeout_ms)
        number = len(self._pages) + 1
        page.on("pageerror", lambda error: self.page_errors.append(f"page{number}: {error}"))
        page.on("console", lambda message: self.console.append(f"page{number} {message.type}: {message.text}"))
        page.on(
            "response",
            lambda response: (
                response.status >= 400
                and self.console.append(
                    f"page{number} http {response.status}: {response.request.method} {response.url}"
                )
            ),
        )
        self._pages.append(page)
        return page

    def screenshot(self, page, step: str, *, full_page: bool = True) -> Path:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{self.test_name}-{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.screenshots.append(path)
        return path

    def _write_console_log(self) -> None:
        if self.console or self.page_errors:
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            lines = self.console + [f"PAGE ERROR {error}" for error in self.page_errors]
            (SCREENSHOT_DIR / f"{self.test_name}-console.log").write_text("\n".join(lines) + "\n")


@pytest.fixture
def chromium(request) -> Chromium:
    return Chromium(request.node.name)


def log_in(
    page, server: LiveDaphne, username: str, password: str = SHOPPER_PASSWORD, *, path: str = "/accounts/login/"
):
    """Sign in through the real login form at `path` and wait until it has let us in."""
    page.goto(f"{server.url}{path}")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', password)
    with page.expect_navigation():
        page.press('input[name="password"]', "Enter")
    if "/login/" in page.url:
        raise AssertionError(f"login as {username} failed; still on {page.url}")


APPROVED_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"


def add_to_cart_in_page(page, server: LiveDaphne, slug: str, quantity: int = 1) -> None:
    """Add a product to the cart through its page's form."""
    page.goto(f"{server.url}/products/{slug}/")
    page.fill('form.add-to-cart input[name="quantity"]', str(quantity))
    with page.expect_navigation():
        page.click('form.add-to-cart button[type="submit"]')


def fill_address_in_page(form, address: dict[str, str]) -> None:
    """Type the shipping address into the checkout form's empty fields (a saved address stays as offered)."""
    for name, value in address.items():
        if name == "country":
            if not form.locator('select[name="country"]').input_value():
                form.locator('select[name="country"]').select_option(value)
        elif not form.locator(f'input[name="{name}"]').input_value():
            form.locator(f'input[name="{name}"]').fill(value)


def pay_in_page(
    page,
    server: LiveDaphne,
    card_number: str,
    *,
    expiry: str = "12/30",
    cvc: str = "123",
    address: dict[str, str] | None = None,
) -> None:
    """Fill the checkout form (opening /checkout/ first if needed) and submit it.

    Empty address fields get `address` (tests.checkout_data.SHIPPING_ADDRESS by default).
    """
    if not page.url.endswith("/checkout/"):
        page.goto(f"{server.url}/checkout/")
    form = page.locator("form.checkout-form")
    fill_address_in_page(form, SHIPPING_ADDRESS if address is None else address)
    form.locator('input[name="number"]').fill(card_number)
    form.locator('input[name="expiry"]').fill(expiry)
    form.locator('input[name="cvc"]').fill(cvc)
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()

"""The fault suite: the production topology survives Redis, daphne, the worker, PostgreSQL and the bank failing.

One topology for the whole module (deploy/prod_local.py's Topology: nginx, 3 daphne processes,
the task worker; DEBUG off, Django's pool, channels-redis) on servers of this module's own: a
PostgreSQL cluster and a redis-server on free ports, and a fake SMTP server (tests/faults.py).
The shared PostgreSQL and Redis are never touched. Each test breaks one part, measures, puts
it back; the `healthy_topology` fixture checks everything runs again before the next one.

Shoppers are plain HTTP clients (tests/faults.py HttpShopper) through nginx; their open pages
are LiveClient below, which does what notifications.js does: it connects with ?after_seq= its
last contiguous seq, resumes after a gap (1 s grace) or a hello/pong ahead of it, shows each
notification id once, and reconnects after any close with full-jitter backoff. Two numbers are
smaller than the browser's, so the suite stays short: the heartbeat every 2 s (25 s in the
page) and the backoff capped at 2 s (30 s).

Each test prints what it measured: checkouts ok, latency against the healthy run of the same
test, notifications delivered, and duplicates (frames for an id already shown, which the
client drops; a notification shown twice would fail the test).
"""

import asyncio
import json
import random
import re
import shutil
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from websockets.asyncio.client import connect

from deploy.prod_local import NGINX, Topology
from notifications.consumers import CLOSE_TRY_AGAIN_LATER
from shop.services import checkout_idempotency_key
from tests.checkout_data import shipping_fields
from tests.faults import (
    Answer,
    FakeSmtpServer,
    HttpShopper,
    PostgresCluster,
    RedisServer,
    _missing,
    postgres_bindir,
)
from tests.live import LiveDaphne

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.fault]

PASSWORD = "shop-demo-2026"  # seed_demo's
CUSTOMERS = 12
APPROVED = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}
BANK_ERROR = {"number": "4000 0000 0000 0119", "expiry": "12/30", "cvc": "123"}
BANK_LATENCY_MS = 200
HEARTBEAT_S = 2.0
BACKOFF_CAP_S = 2.0
GAP_GRACE_S = 1.0
RESUME_RETRY_S = 10.0
DELIVERY_WAIT_S = 30.0
STYLED_500 = "Something went wrong on our side"
ORDER_PATH = re.compile(r"^/orders/([A-Za-z0-9]+)/$")


# The servers of this module ----------------------------------------------------------------


class ShopDatabase:
    """Read the topology's database directly (psycopg), for what the test checks."""

    def __init__(self, url: str):
        self.url = url

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
            return connection.execute(query, params).fetchall()

    def value(self, query: str, params: tuple = ()):
        return self.rows(query, params)[0][0]

    def user_id(self, username: str) -> int:
        return self.value("SELECT id FROM auth_user WHERE username = %s", (username,))

    def last_seq(self, user_id: int) -> int:
        return self.value(
            "SELECT COALESCE(MAX(seq), 0) FROM notifications_notification WHERE recipient_id = %s", (user_id,)
        )

    def notification_ids(self, user_id: int, after_seq: int) -> list[int]:
        query = "SELECT id FROM notifications_notification WHERE recipient_id = %s AND seq > %s ORDER BY seq"
        return [row[0] for row in self.rows(query, (user_id, after_seq))]

    def orders(self, numbers: list[str] | None = None) -> dict[str, dict]:
        """number -> {status, captured (charges captured), payments: [(kind, status)]}."""
        query = (
            "SELECT o.number, o.status, p.kind, p.status FROM shop_order o "
            "LEFT JOIN shop_payment p ON p.order_id = o.id"
        )
        params: tuple = ()
        if numbers is not None:
            query += " WHERE o.number = ANY(%s)"
            params = (list(numbers),)
        orders: dict[str, dict] = {}
        for number, status, kind, payment_status in self.rows(query, params):
            order = orders.setdefault(number, {"status": status, "captured": 0, "payments": []})
            if kind is not None:
                order["payments"].append((kind, payment_status))
                order["captured"] += kind == "charge" and payment_status == "captured"
        return orders

    def email_tasks(self) -> Counter:
        return Counter(
            dict(
                self.rows(
                    "SELECT status, count(*) FROM django_tasks_database_dbtaskresult WHERE task_path LIKE %s GROUP BY status",
                    ("%send_order_confirmation",),
                )
            )
        )


@dataclass
class Stack:
    cluster: PostgresCluster
    redis: RedisServer
    smtp: FakeSmtpServer
    topology: Topology
    db: ShopDatabase
    slugs: list[str]
    pids: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    # Skipped with the reason where a server is missing; under CI=true a failure (tests/faults.py).
    if postgres_bindir() is None:
        _missing("no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql")
    if shutil.which("redis-server") is None:
        _missing("no redis-server on PATH: apt-get install redis-server")
    if not Path(NGINX).exists():
        _missing(f"no nginx at {NGINX}: apt-get install nginx")
    started = time.monotonic()
    cluster = PostgresCluster(name="fault-suite", settings={"max_connections": "150"})
    redis_server = RedisServer(name="fault-suite-redis")
    smtp = FakeSmtpServer()
    topology = None
    try:
        cluster.init().start()
        redis_server.start()
        smtp.start()
        cluster.execute("CREATE DATABASE shop")
        topology = Topology(
            run_dir=tmp_path_factory.mktemp("fault-suite") / "prod-local",
            database_url=cluster.url("shop"),
            redis_url=redis_server.url(),
            daphnes=3,
            bank_latency_ms=BANK_LATENCY_MS,
            extra_env={
                "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "DJANGO_EMAIL_HOST": "127.0.0.1",
                "DJANGO_EMAIL_PORT": str(smtp.port),
            },
        )
        topology.prepare_database(seed=False)
        topology.manage("seed_demo", "--customers", str(CUSTOMERS), "--products", "3", "--stock", "5000")
        prepared = time.monotonic()
        topology.start()
        db = ShopDatabase(cluster.url("shop"))
        slugs = [row[0] for row in db.rows("SELECT slug FROM shop_product WHERE is_active ORDER BY id")]
        print(
            f"\n[fault suite] own PostgreSQL :{cluster.port}, Redis :{redis_server.port}, SMTP :{smtp.port}; "
            f"migrated and seeded in {prepared - started:.1f} s; topology up in {time.monotonic() - prepared:.1f} s "
            f"(nginx :{topology.nginx_port}, {topology.pids})"
        )
        yield Stack(cluster=cluster, redis=redis_server, smtp=smtp, topology=topology, db=db, slugs=slugs)
    finally:
        if topology is not None:
            topology.stop()
        smtp.stop()
        redis_server.cleanup()
        cluster.cleanup()


@pytest.fixture
def healthy_topology(stack: Stack) -> Stack:
    """Every server up and every process of the topology running before the test (a failed test may leave one down)."""
    stack.redis.resume()
    if not stack.redis.is_running():
        stack.redis.start()
    if not stack.cluster.is_running():
        stack.cluster.start()
    stack.smtp.release()
    for name in [*stack.topology.daphne_names, "worker", "nginx"]:
        if not stack.topology.is_running(name):
            stack.topology.restart_process(name)
    stack.pids = dict(stack.topology.pids)
    return stack


def shoppers(stack: Stack, numbers: range, base_url: str | None = None) -> list[tuple[str, HttpShopper]]:
    """Signed-in seed_demo customers (customerN), through nginx unless `base_url` is given."""
    signed_in = []
    for number in numbers:
        shopper = HttpShopper(base_url or stack.topology.url, timeout=60)
        shopper.sign_in(f"customer{number}", PASSWORD)
        signed_in.append((f"customer{number}", shopper))
    return signed_in


# Checkouts -------------------------------------------------------------------------------


@dataclass
class Checkout:
    username: str
    answer: Answer
    started: float  # monotonic

    @property
    def order_number(self) -> str | None:
        match = ORDER_PATH.match(self.answer.location or "")
        return match.group(1) if match else None


def checkout(username: str, shopper: HttpShopper, slug: str, card: dict = APPROVED) -> Checkout:
    """Add one unit through the product page, pay through the checkout page; time the POST."""
    page = shopper.get(f"/products/{slug}/")
    added = shopper.post("/cart/add/", {**page.form(action="/cart/add/"), "quantity": "1"})
    assert added.status == 302, f"{username}: add to cart answered {added.status}"
    form = shopper.get("/checkout/").form(action="/checkout/")
    started = time.monotonic()
    answer = shopper.post("/checkout/", {**form, **shipping_fields(email=f"{username}@example.com"), **card})
    return Checkout(username=username, answer=answer, started=started)


def checkout_stream(stack: Stack, signed_in: list[tuple[str, HttpShopper]], rounds: int) -> list[Checkout]:
    """Every shopper pays `rounds` times in a row, all shoppers at once."""

    def one_shopper(index: int) -> list[Checkout]:
        username, shopper = signed_in[index]
        slug = stack.slugs[index % len(stack.slugs)]
        return [checkout(username, shopper, slug) for _round in range(rounds)]

    with ThreadPoolExecutor(max_workers=len(signed_in)) as pool:
        return [done for batch in pool.map(one_shopper, range(len(signed_in))) for done in batch]


def assert_all_paid(stack: Stack, checkouts: list[Checkout], what: str) -> None:
    failed = [(c.username, c.answer.status, c.answer.location) for c in checkouts if c.order_number is None]
    assert not failed, f"{what}: checkouts that did not end on their order page: {failed}"
    orders = stack.db.orders([c.order_number for c in checkouts])
    unpaid = {number: order for number, order in orders.items() if order["status"] != "paid" or order["captured"] != 1}
    assert not unpaid and len(orders) == len(checkouts), f"{what}: orders not PAID with one capture: {unpaid}"


def seconds(checkouts: list[Checkout]) -> list[float]:
    return sorted(c.answer.elapsed for c in checkouts)


def latency_summary(healthy: list[float], faulted: list[float]) -> str:
    ratio = statistics.median(faulted) / statistics.median(healthy)
    return (
        f"checkout POST healthy median {statistics.median(healthy) * 1000:.0f} ms (max {max(healthy) * 1000:.0f}), "
        f"during the fault median {statistics.median(faulted) * 1000:.0f} ms (max {max(faulted) * 1000:.0f}): "
        f"ratio {ratio:.2f}"
    )


def assert_normal_time(healthy: list[float], faulted: list[float], what: str) -> None:
    """Loose bounds: a checkout waiting for Redis would take at least the push timeout (2 s) longer."""
    slow = [round(value, 2) for value in faulted if value > max(healthy) + 1.5]
    assert not slow, f"{what}: checkouts far slower than the healthy run (max {max(healthy):.2f} s): {slow}"
    assert statistics.median(faulted) < 2 * statistics.median(healthy) + 0.3, latency_summary(healthy, faulted)


# Open pages -------------------------------------------------------------------------------


class LiveClient:
    """One open page's socket, as notifications.js runs it (see the module docstring)."""

    def __init__(self, *, username: str, user_id: int, ws_url: str, origin: str, cookies: dict, after_seq: int):
        self.username, self.user_id = username, user_id
        self.url = f"{ws_url}/ws/notifications/"
        self.origin = origin
        self.cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
        self.start_seq = self.last_seq = self.known_seq = after_seq
        self.ahead: set[int] = set()
        self.shown: list[int] = []  # ids, in the order shown
        self.frames = Counter()  # id -> notification frames received (a push and a replay may overlap)
        self.replayed: set[int] = set()  # ids first shown from a replay (after_seq on connect, or a resume)
        self.connections: list[dict] = []  # {"upstream", "opened", "closed", "code"}
        self.failed_connects = 0
        self.resume_asked_at = 0.0
        self.gap_since: float | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.socket = None
        self.stopping = False

    @property
    def connected(self) -> bool:
        return bool(self.connections) and self.connections[-1]["closed"] is None

    async def run(self) -> None:
        attempt = 0
        while not self.stopping:
            await self.gate.wait()
            self.resume_asked_at = time.monotonic()  # ?after_seq= counts as the pending resume
            try:
                socket = await connect(
                    f"{self.url}?after_seq={self.last_seq}",
                    origin=self.origin,
                    additional_headers={"Cookie": self.cookie},
                    open_timeout=10,
                    ping_interval=None,  # A browser sends no pings; the page's heartbeat is a frame.
                )
            except Exception:
                self.failed_connects += 1
            else:
                attempt = 0
                self.socket = socket
                connection = {
                    "upstream": socket.response.headers.get("X-Upstream", ""),
                    "opened": time.monotonic(),
                    "closed": None,
                    "code": None,
                }
                self.connections.append(connection)
                ticker = asyncio.ensure_future(self._tick(socket))
                try:
                    async for raw in socket:
                        await self._frame(socket, json.loads(raw))
                except Exception:
                    pass  # A connection cut without a close frame: the close code says so (1006).
                finally:
                    ticker.cancel()
                    connection["closed"], connection["code"] = time.monotonic(), socket.close_code
                    self.socket = None
                    self.resume_asked_at = 0.0
                    self.gap_since = None
            if self.stopping:
                return
            ceiling = min(BACKOFF_CAP_S, 0.5 * 2**attempt)
            attempt += 1
            await asyncio.sleep(max(0.25, random.random() * ceiling))

    async def stop(self) -> None:
        self.stopping = True
        self.gate.set()
        if self.socket is not None:
            await self.socket.close()

    async def _send(self, socket, message: dict) -> None:
        try:
            await socket.send(json.dumps(message))
        except Exception:
            pass  # The close is handled by the reader.

    async def _tick(self, socket) -> None:
        """The heartbeat and the gap check (notifications.js does them with timers)."""
        next_ping = time.monotonic() + HEARTBEAT_S
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + HEARTBEAT_S
                await self._send(socket, {"type": "ping"})
            if self.last_seq >= self.known_seq:
                self.gap_since = None
                continue
            if self.gap_since is None:
                self.gap_since = now
            waited = now - (self.resume_asked_at or self.gap_since)
            if waited >= (RESUME_RETRY_S if self.resume_asked_at else GAP_GRACE_S):
                self.resume_asked_at = now
                await self._send(socket, {"type": "resume", "after_seq": self.last_seq})

    async def _frame(self, socket, frame: dict) -> None:
        kind = frame.get("type")
        if kind in {"hello", "pong"}:
            self.known_seq = max(self.known_seq, int(frame.get("last_seq") or 0))
        elif kind == "replayed":
            self.resume_asked_at = 0.0
            self._advance(int(frame["last_seq"]))
        elif kind == "notification":
            seq, notification_id = int(frame["seq"]), int(frame["id"])
            if seq > self.last_seq:
                self.ahead.add(seq)
                self.known_seq = max(self.known_seq, seq)
                self._advance(self.last_seq)
            self.frames[notification_id] += 1
            if notification_id not in self.shown:
                self.shown.append(notification_id)
                if self.resume_asked_at:
                    self.replayed.add(notification_id)
                await self._send(socket, {"type": "ack", "id": notification_id})

    def _advance(self, seq: int) -> None:
        self.last_seq = max(self.last_seq, seq)
        while self.last_seq + 1 in self.ahead:
            self.last_seq += 1
        self.ahead = {number for number in self.ahead if number > self.last_seq}
        self.known_seq = max(self.known_seq, self.last_seq)


class OpenPages:
    """LiveClients on an event loop of their own (a thread), so the test drives HTTP and processes meanwhile."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="open-pages", daemon=True)
        self.thread.start()
        self.clients: list[LiveClient] = []
        self.tasks = []

    def call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def open(self, stack: Stack, signed_in: list[tuple[str, HttpShopper]]) -> list[LiveClient]:
        """One open page per shopper (through nginx), each from the shopper's current last seq; wait until all are live."""
        clients = []
        for username, shopper in signed_in:
            user_id = stack.db.user_id(username)
            clients.append(
                LiveClient(
                    username=username,
                    user_id=user_id,
                    ws_url=stack.topology.ws_url,
                    origin=stack.topology.url,
                    cookies=shopper.cookies,
                    after_seq=stack.db.last_seq(user_id),
                )
            )

        async def start():
            for client in clients:
                client.gate = asyncio.Event()  # Bound to this loop.
                client.gate.set()
                self.tasks.append(asyncio.ensure_future(client.run()))

        self.call(start())
        self.clients += clients
        wait_until(lambda: all(client.connected for client in clients), 20, "every page's socket opened")
        return clients

    def hold_reconnects(self, clients: list[LiveClient]) -> None:
        """Pages that cannot reconnect (the shopper's laptop is asleep), until allow_reconnects()."""
        self.call(_apply(lambda: [client.gate.clear() for client in clients]))

    def allow_reconnects(self, clients: list[LiveClient]) -> None:
        self.call(_apply(lambda: [client.gate.set() for client in clients]))

    def close(self) -> None:
        async def stop_all():
            await asyncio.gather(*(client.stop() for client in self.clients), return_exceptions=True)
            await asyncio.wait(self.tasks, timeout=5)

        try:
            self.call(stop_all(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


async def _apply(function):
    return function()


@pytest.fixture
def open_pages():
    pages = OpenPages()
    try:
        yield pages
    finally:
        pages.close()


class LogMarks:
    """Where each daphne's log ended when the test began, to read what the test added."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.offsets = {name: _size(topology.log_path(name)) for name in topology.daphne_names}

    def tracebacks(self) -> list[str]:
        """Each traceback the daphne processes logged since, with the line before it."""
        found = []
        for name, offset in self.offsets.items():
            with open(self.topology.log_path(name), "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
            found += [
                f"{name}: {lines[i - 1] if i else ''}" for i, line in enumerate(lines) if line.startswith("Traceback")
            ]
        return found


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def wait_until(condition, timeout: float, what: str) -> float:
    """Poll `condition` until it holds; return the seconds waited; fail after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def delivery_report(stack: Stack, clients: list[LiveClient], *, timeout: float = DELIVERY_WAIT_S) -> dict:
    """Wait until every page has shown every notification its user got since it opened; check each once.

    Return the counts: expected, shown, duplicate frames (dropped by the id check), seconds waited.
    """
    expected = {client.username: stack.db.notification_ids(client.user_id, client.start_seq) for client in clients}

    def complete() -> bool:
        return all(set(expected[client.username]) <= set(client.shown) for client in clients)

    try:
        waited = wait_until(complete, timeout, "every notification shown on its page")
    except AssertionError:
        missing = {c.username: sorted(set(expected[c.username]) - set(c.shown)) for c in clients}
        raise AssertionError(
            f"notifications never shown within {timeout:.0f} s: {missing}; sockets: "
            + "; ".join(f"{c.username} {c.connections[-3:]}" for c in clients)
        ) from None
    for client in clients:
        shown = Counter(client.shown)
        assert all(count == 1 for count in shown.values()), f"{client.username} showed {shown}"
        strangers = set(client.shown) - set(stack.db.notification_ids(client.user_id, client.start_seq))
        assert not strangers, f"{client.username} was shown notifications of someone else: {strangers}"
    total = sum(len(ids) for ids in expected.values())
    return {
        "expected": total,
        "shown": sum(len(client.shown) for client in clients),
        "duplicate_frames": sum(count - 1 for client in clients for count in client.frames.values() if count > 1),
        "replayed": sum(len(set(expected[client.username]) & client.replayed) for client in clients),
        "waited_s": waited,
    }


# 1. Redis stopped -----------------------------------------------------------------------------


def test_redis_stopped_during_a_stream_of_checkouts_costs_no_checkout_and_no_notification(
    healthy_topology: Stack, open_pages: OpenPages
):
    """Redis stops while shoppers pay: checkouts answer in their usual time; the open pages are told to
    come back later (CLOSE_TRY_AGAIN_LATER, never a 1011 and a traceback), reconnect once Redis is back,
    and show each missed notification once."""
    stack = healthy_topology
    logs = LogMarks(stack.topology)
    signed_in = shoppers(stack, range(1, 5))
    clients = open_pages.open(stack, signed_in)

    healthy = checkout_stream(stack, signed_in, rounds=3)
    delivery_report(stack, clients)

    stack.redis.stop()
    stopped_at = time.monotonic()
    faulted = checkout_stream(stack, signed_in, rounds=3)
    # Until the layer gives up (~3.4 s of retries) the sockets stay open and the heartbeat's gap
    # check replays what the lost pushes carried; then they are closed, and the pages cannot
    # come back while Redis is down. What is paid from then on only a reconnect can bring.
    wait_until(lambda: not any(client.connected for client in clients), 20, "every socket closed")
    closed_at = time.monotonic()
    faulted += checkout_stream(stack, signed_in, rounds=1)
    while_closed = {c.order_number for c in faulted[-len(signed_in) :]}
    stack.redis.start()
    back_at = time.monotonic()
    report = delivery_report(stack, clients)

    assert_all_paid(stack, healthy + faulted, "Redis stopped")
    closes = Counter(c["code"] for client in clients for c in client.connections if c["closed"] is not None)
    reconnected = [client for client in clients if len(client.connections) >= 2 and client.connected]
    print(
        f"\n[fault 1: Redis stopped {back_at - stopped_at:.1f} s, sockets closed after {closed_at - stopped_at:.1f} s] "
        f"checkouts ok {len(healthy)}/{len(healthy)} "
        f"healthy, {len(faulted)}/{len(faulted)} while Redis was down; "
        f"{latency_summary(seconds(healthy), seconds(faulted))}; socket closes by code {dict(closes)}, "
        f"pages reconnected after Redis came back {len(reconnected)}/{len(clients)} (orders paid while every page "
        f"was closed: {len(while_closed)}); notifications delivered "
        f"{report['shown']}/{report['expected']} ({report['replayed']} by replay) (each shown once), all {time.monotonic() - back_at:.1f} s after "
        f"Redis came back; duplicate frames dropped by id {report['duplicate_frames']}; duplicates shown 0; "
        f"tracebacks in the daphne logs {len(logs.tracebacks())}"
    )
    assert closes[CLOSE_TRY_AGAIN_LATER] >= 1 and set(closes) == {CLOSE_TRY_AGAIN_LATER}, (
        f"open sockets closed with {dict(closes)}, not {CLOSE_TRY_AGAIN_LATER}"
    )
    assert len(reconnected) == len(clients), [client.connections for client in clients]
    assert not logs.tracebacks(), logs.tracebacks()[0]
    assert_normal_time(seconds(healthy), seconds(faulted), "Redis stopped")


# 2. Redis paused -------------------------------------------------------------------------------


def test_redis_paused_leaves_checkouts_at_their_normal_time_and_sockets_recover_after_it_resumes(
    healthy_topology: Stack, open_pages: OpenPages
):
    """Redis frozen (SIGSTOP: it accepts connections and never answers) while shoppers pay."""
    stack = healthy_topology
    signed_in = shoppers(stack, range(5, 9))
    clients = open_pages.open(stack, signed_in)

    healthy = checkout_stream(stack, signed_in, rounds=2)
    delivery_report(stack, clients)

    stack.redis.pause()
    paused_at = time.monotonic()
    try:
        faulted = checkout_stream(stack, signed_in, rounds=2)
        time.sleep(max(0.0, 4.0 - (time.monotonic() - paused_at)))
    finally:
        stack.redis.resume()
    resumed_at = time.monotonic()
    report = delivery_report(stack, clients)

    assert_all_paid(stack, healthy + faulted, "Redis paused")
    closes = Counter(c["code"] for client in clients for c in client.connections if c["closed"] is not None)
    print(
        f"\n[fault 2: Redis paused {resumed_at - paused_at:.1f} s] checkouts ok {len(healthy)}/{len(healthy)} "
        f"healthy, {len(faulted)}/{len(faulted)} while paused; {latency_summary(seconds(healthy), seconds(faulted))}; "
        f"socket closes {dict(closes) or 'none'}; notifications delivered {report['shown']}/{report['expected']} ({report['replayed']} by replay) "
        f"(all shown once), {time.monotonic() - resumed_at:.1f} s after Redis resumed; duplicate frames dropped by "
        f"id {report['duplicate_frames']}; duplicates shown 0"
    )
    assert_normal_time(seconds(healthy), seconds(faulted), "Redis paused")


# 3. A daphne process killed -------------------------------------------------------------------


def test_pages_on_a_killed_daphne_reconnect_through_nginx_to_another_and_miss_nothing(
    healthy_topology: Stack, open_pages: OpenPages
):
    """SIGKILL one daphne holding open pages; while those pages are away, their shoppers' orders are
    paid (through nginx, on the other processes); back, they resume with after_seq and show each once."""
    stack = healthy_topology
    topology = stack.topology
    signed_in = shoppers(stack, range(1, 10))
    clients = open_pages.open(stack, signed_in)
    names = {f"127.0.0.1:{port}": name for name, port in zip(topology.daphne_names, topology.daphne_ports, strict=True)}
    spread = Counter(names[client.connections[-1]["upstream"]] for client in clients)
    victim = spread.most_common(1)[0][0]
    cut = [client for client in clients if names[client.connections[-1]["upstream"]] == victim]

    open_pages.hold_reconnects(cut)
    killed_at = time.monotonic()
    topology.kill(victim)
    wait_until(lambda: not any(client.connected for client in cut), 10, f"the pages on {victim} saw their socket close")
    away = checkout_stream(stack, signed_in, rounds=1)  # Everyone pays; the cut pages are away meanwhile.
    assert_all_paid(stack, away, f"{victim} killed")
    missed = sum(len(stack.db.notification_ids(c.user_id, c.last_seq)) for c in cut)
    open_pages.allow_reconnects(cut)
    allowed_at = time.monotonic()
    report = delivery_report(stack, clients)

    moved_to = Counter(names[client.connections[-1]["upstream"]] for client in cut)
    reconnected_after = max(client.connections[-1]["opened"] for client in cut) - allowed_at
    print(
        f"\n[fault 3: {victim} SIGKILLed] open pages per process {dict(sorted(spread.items()))}; pages cut {len(cut)} "
        f"(close codes {sorted({c.connections[0]['code'] for c in cut}, key=str)}), reconnected through nginx to "
        f"{dict(moved_to)} {reconnected_after:.2f} s after they were let back ({allowed_at - killed_at:.1f} s after "
        f"the kill); checkouts ok {len(away)}/{len(away)} while it was down; "
        f"notifications created while the pages were away {missed}, delivered {report['shown']}/{report['expected']} ({report['replayed']} by replay) "
        f"(all shown once); duplicate frames dropped by id {report['duplicate_frames']}; duplicates shown 0"
    )
    assert victim not in moved_to, f"a page reconnected to the dead {victim}"
    assert missed >= len(cut)
    topology.restart_process(victim)


# 4. The task worker killed mid-send --------------------------------------------------------------


def emails_by_order(stack: Stack) -> Counter:
    subjects = stack.smtp.subjects()
    return Counter(match.group(1) for s in subjects if (match := re.search(r"Your order (\w+) is confirmed", s)))


def test_the_worker_killed_mid_send_and_restarted_sends_every_email_once(healthy_topology: Stack):
    """The mail server holds its answer to a message; the worker is SIGKILLed while it waits.

    Then the task is RUNNING with nobody running it. The restarted worker (`db_worker`, the
    project's) finds that its predecessor's process is gone, queues the task again and sends
    the email: once, because the server never took the first try. At least once, not exactly
    once: a worker killed after the server's "250 queued" but before the order noted the receipt
    would send it a second time (the window is a few milliseconds; see the README).
    """
    stack = healthy_topology
    topology, smtp = stack.topology, stack.smtp
    paid_before = {number for number, order in stack.db.orders().items() if order["status"] == "paid"}
    wait_until(lambda: paid_before <= set(emails_by_order(stack)), 60, "the earlier orders' emails went out")

    smtp.hold_next_data()
    signed_in = shoppers(stack, range(1, 4))
    orders = checkout_stream(stack, signed_in, rounds=1)
    assert_all_paid(stack, orders, "worker test")
    wait_until(smtp.held.is_set, 20, "the worker reached the mail server")
    topology.kill("worker")
    killed_at = time.monotonic()
    smtp.release()
    left_running = stack.db.email_tasks()["RUNNING"]
    topology.restart_process("worker")
    numbers = {c.order_number for c in orders}
    waited = wait_until(lambda: numbers <= set(emails_by_order(stack)), 30, "every email sent after the restart")
    sent_after_kill = time.monotonic() - killed_at
    time.sleep(1.0)  # Room for a duplicate to show.

    paid = {number for number, order in stack.db.orders().items() if order["status"] == "paid"}
    sent = emails_by_order(stack)
    twice = {number: count for number, count in sent.items() if count > 1}
    print(
        f"\n[fault 4: worker SIGKILLed mid-send] email tasks left RUNNING by the dead worker {left_running}; "
        f"messages abandoned mid-DATA {len(smtp.abandoned)}; after the restart all {len(numbers)} new emails "
        f"sent {waited:.1f} s after the restart ({sent_after_kill:.1f} s after the kill); PAID orders so far {len(paid)}, "
        f"emails taken by the server {sum(sent.values())}, duplicates {len(twice)}; worker log: "
        f"{[line for line in topology.log_tail('worker', 200).splitlines() if 'queued again' in line][-1:]}"
    )
    assert left_running == 1
    assert not twice, f"emails sent more than once: {twice}"
    assert set(sent) == paid, (
        f"PAID orders without an email: {paid - set(sent)}; emails without a PAID order: {set(sent) - paid}"
    )


# 5. PostgreSQL restarted ---------------------------------------------------------------------------


@dataclass
class Probe:
    """A shopper requesting pages from one entry point in a loop, recording each answer."""

    name: str
    shopper: HttpShopper
    paths: list[str]
    answers: list[tuple[float, str, int, str, float]] = field(default_factory=list)  # (at, path, status, kind, took)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for number in range(100_000):
            if self.stop.is_set():
                return
            path = self.paths[number % len(self.paths)]
            try:
                answer = self.shopper.get(path)
            except OSError as error:
                self.answers.append((time.monotonic(), path, 0, f"connection failed: {error!r}", 0.0))
            else:
                self.answers.append((time.monotonic(), path, answer.status, classify(answer), answer.elapsed))
            time.sleep(0.05)


def classify(answer: Answer) -> str:
    if "Traceback" in answer.body or "Exception Value" in answer.body:
        return "TRACEBACK"
    if answer.status < 400:
        return "ok"
    if answer.status == 500 and STYLED_500 in answer.body and 'class="site-header"' in answer.body:
        return "styled 500"  # The shop's 500.html in its layout (DEBUG is off).
    return f"unstyled {answer.status}: {' '.join(re.sub(r'<[^>]+>', ' ', answer.body).split())[:120]}"


def test_postgresql_restarted_mid_run_shows_the_styled_error_page_and_recovers_without_a_restart(
    healthy_topology: Stack,
):
    """PostgreSQL stops (fast shutdown: sessions cut) and starts again 2 s later while shoppers browse and pay.

    Through nginx (Django's pool, as in production) and on one daphne without the pool
    (DATABASE_POOL=false, a connection per request). Every answer is a page or the styled error
    page, never a traceback; the processes keep running and serve 200 again by themselves.
    """
    stack = healthy_topology
    topology = stack.topology
    no_pool = LiveDaphne(name="fault-suite-no-pool", extra_env={**topology.environment(), "DATABASE_POOL": "false"})
    no_pool.start()
    try:
        [(_username, through_nginx)] = shoppers(stack, range(10, 11))
        [(_username, direct)] = shoppers(stack, range(11, 12), base_url=no_pool.url)
        probes = [
            Probe("pool, through nginx", through_nginx, ["/", "/orders/", "/notifications/"]),
            Probe("no pool, direct", direct, ["/", "/orders/", "/notifications/"]),
        ]
        buyers = shoppers(stack, range(12, 13))
        payments: list[Checkout] = []
        paying = threading.Event()

        def keep_paying() -> None:
            username, shopper = buyers[0]
            while not paying.is_set():
                try:
                    payments.append(checkout(username, shopper, stack.slugs[0]))
                except (AssertionError, OSError):
                    time.sleep(0.2)  # The cart page itself failed (the database is down): try again.

        threads = [threading.Thread(target=probe.run, daemon=True) for probe in probes]
        threads.append(threading.Thread(target=keep_paying, daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        stopping_at = time.monotonic()
        restart = stack.cluster.restart(down_for=2.0, mode="fast")
        back_at = time.monotonic()

        def recovered(probe: Probe) -> bool:
            recent = [status for at, _path, status, _kind, _took in probe.answers if at > back_at][-5:]
            return len(recent) == 5 and all(status == 200 for status in recent)

        recovery = {
            probe.name: wait_until(lambda p=probe: recovered(p), 30, f"{probe.name} answers 200") for probe in probes
        }
        paying.set()
        for probe in probes:
            probe.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        no_pool.stop()

    kinds = {probe.name: Counter(kind for _at, _path, _status, kind, _took in probe.answers) for probe in probes}
    # The pool makes a request wait for a connection (up to DATABASE_POOL_TIMEOUT) rather than fail at once.
    slowest = {
        probe.name: round(max(took for at, _path, _status, _kind, took in probe.answers if at >= stopping_at), 1)
        for probe in probes
    }
    checkout_kinds = Counter(
        f"{c.answer.status} {'order page' if c.order_number else classify(c.answer)}" for c in payments
    )
    worker_exited = not topology.is_running("worker")
    if worker_exited:
        topology.restart_process("worker")  # systemd does this (Restart=always); the Topology does not.
    # Checkouts cut off mid-way are settled by reconciliation, as the worker would after PAYMENT_RECONCILE_AFTER.
    reconciled = topology.manage("reconcile_payments", "--older-than", "0").strip()
    numbers = [c.order_number for c in payments if c.order_number]
    orders = stack.db.orders(numbers)
    print(
        f"\n[fault 5: PostgreSQL restarted: stop {restart['stop_s']:.2f} s, down {restart['down_s']:.1f} s, "
        f"start {restart['start_s']:.2f} s] answers {kinds}, slowest answer since the stop (s) {slowest}; checkouts during the run {dict(checkout_kinds)}; "
        f"200 again {', '.join(f'{name} {value:.1f} s' for name, value in recovery.items())} after PostgreSQL "
        f"was back (5 in a row); daphne PIDs unchanged {all(topology.pids[n] == stack.pids[n] for n in topology.daphne_names)}; "
        f"worker exited {worker_exited} (restarted); reconcile_payments: {reconciled or '(nothing to say)'}; orders "
        f"{Counter(order['status'] for order in orders.values())}"
    )
    for probe in probes:
        bad = {kind: count for kind, count in kinds[probe.name].items() if kind not in {"ok", "styled 500"}}
        assert not bad, f"{probe.name}: answers other than a page or the styled error page: {bad}"
    bad_checkouts = [c for c in payments if not c.order_number and classify(c.answer) not in {"ok", "styled 500"}]
    assert not bad_checkouts, [(c.answer.status, classify(c.answer)) for c in bad_checkouts]
    assert all(topology.pids[name] == stack.pids[name] for name in topology.daphne_names), "a daphne was restarted"
    assert sum(kinds[probe.name]["styled 500"] for probe in probes) >= 1, "no request met the outage"
    assert all(order["status"] in {"paid", "cancelled"} for order in orders.values()), orders
    assert all((order["status"] == "paid") == (order["captured"] == 1) for order in orders.values()), orders


# 6. The bank slow past the timeout, and erroring ------------------------------------------------------


def ledger(stack: Stack) -> dict[str, str]:
    """The sandbox bank's answers: charge key -> outcome."""
    import sqlite3

    path = Path(stack.topology.environment()["SANDBOX_BANK_LEDGER"])
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute("SELECT idempotency_key, outcome FROM sandbox_bank_ledger WHERE kind = 'charge'")
        return dict(rows.fetchall())


def test_a_slow_or_failing_bank_ends_every_order_paid_with_a_capture_or_released_never_paid_without(
    healthy_topology: Stack,
):
    """A bank slower than twice PAYMENT_TIMEOUT: the shopper is told "being confirmed", the background
    call is abandoned, the order stays PENDING; reconciliation settles it from the bank's ledger.
    The bank erroring (card 4000 0000 0000 0119): refused at once on a fast bank, and released by
    reconciliation on the slow one. Every order of the whole suite is then checked against the ledger.
    """
    stack = healthy_topology
    topology = stack.topology
    slow = LiveDaphne(
        name="fault-suite-slow-bank",
        extra_env={**topology.environment(), "PAYMENT_TIMEOUT": "1", "SANDBOX_BANK_LATENCY_MS": "2500"},
    )
    slow.start()
    try:
        slow_shoppers = shoppers(stack, range(1, 6), base_url=slow.url)
        cards = [APPROVED, APPROVED, APPROVED, BANK_ERROR, BANK_ERROR]
        with ThreadPoolExecutor(max_workers=len(slow_shoppers)) as pool:
            slow_checkouts = list(
                pool.map(
                    lambda args: checkout(args[0][0], args[0][1], stack.slugs[1], args[1]),
                    zip(slow_shoppers, cards, strict=True),
                )
            )
        fast_errors = [checkout(u, s, stack.slugs[2], BANK_ERROR) for u, s in shoppers(stack, range(6, 8))]
        # Past 2 x PAYMENT_TIMEOUT after the last bank call began: every background call is abandoned.
        time.sleep(max(0.0, max(c.started for c in slow_checkouts) + 2.3 - time.monotonic()))
        pending_before = {
            number: order["status"]
            for number, order in stack.db.orders([c.order_number for c in slow_checkouts]).items()
        }
    finally:
        slow.stop()

    reconciled = topology.manage("reconcile_payments", "--older-than", "0").strip()
    slow_orders = stack.db.orders([c.order_number for c in slow_checkouts])
    outcome = {
        c.order_number: "approved" if card is APPROVED else "bank error"
        for c, card in zip(slow_checkouts, cards, strict=True)
    }

    all_orders = stack.db.orders()
    books = ledger(stack)
    keys = dict(stack.db.rows("SELECT number, checkout_token FROM shop_order"))
    paid_without_capture = [
        n for n, o in all_orders.items() if o["status"] in {"paid", "shipped", "delivered"} and o["captured"] != 1
    ]
    charged_not_paid = [
        n
        for n, o in all_orders.items()
        if books.get(f"charge:{checkout_idempotency_key(keys[n])}") == "charged" and o["status"] != "paid"
    ]
    print(
        f"\n[fault 6: bank slow (2.5 s, PAYMENT_TIMEOUT 1 s) and erroring] slow-bank POSTs answered in "
        f"{', '.join(f'{c.answer.elapsed:.1f}' for c in slow_checkouts)} s, each {Counter(c.answer.status for c in slow_checkouts)} "
        f"to the order page; orders before reconciliation {Counter(pending_before.values())}; reconcile_payments: "
        f"{reconciled}; after: approved -> {Counter(slow_orders[n]['status'] for n, kind in outcome.items() if kind == 'approved')}, "
        f"bank error -> {Counter(slow_orders[n]['status'] for n, kind in outcome.items() if kind != 'approved')}; "
        f"fast bank errors {Counter(c.answer.status for c in fast_errors)} with no order; whole suite: "
        f"{len(all_orders)} orders {dict(Counter(o['status'] for o in all_orders.values()))}, PAID without a capture "
        f"{len(paid_without_capture)}, charged by the bank but not PAID {len(charged_not_paid)}"
    )
    assert all(c.order_number for c in slow_checkouts), [(c.answer.status, c.answer.location) for c in slow_checkouts]
    assert set(pending_before.values()) == {"pending"}, pending_before
    for number, kind in outcome.items():
        order = slow_orders[number]
        if kind == "approved":
            assert order["status"] == "paid" and order["captured"] == 1, (number, order)
        else:
            assert order["status"] == "cancelled" and order["captured"] == 0, (number, order)
    assert all(c.answer.status == 402 and not c.order_number for c in fast_errors)
    assert not paid_without_capture and not charged_not_paid

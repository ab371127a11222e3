"""The production topology (deploy/prod_local.py) driven through nginx: 3 daphne processes, one worker.

The processes are the ones `make prod-local` runs (DEBUG off, manifest static files, Django's
pool, channels-redis), pointed at this test's database and a Redis database of its own. nginx
names the daphne that answered each request in an X-Upstream header (a local-run option of
the template), so the test knows which process served each login, socket and checkout.

Shown here: requests spread over the processes; each shopper's socket, opened through nginx,
receives the notification of that shopper's checkout (and nobody else's) whichever process
served the checkout; an order placed on one process directly shows live on a socket held by
another; the worker sends every confirmation email; static files come from nginx with
hashed names and long cache headers.
"""

import asyncio
import json
import os
import re
import subprocess
import time
from collections import Counter

import pytest
import redis
from django.conf import global_settings
from django.contrib.auth.hashers import make_password
from django_tasks_db.models import DBTaskResult
from websockets.asyncio.client import connect

from deploy import prod_local
from deploy.prod_local import Topology, process_start_time
from notifications import tasks
from notifications.models import Notification
from shop.models import Order
from tests.faults import HttpShopper
from tests.live import current_database_url, redis_url_with_db

# A Redis database of its own (0: the suite's, 1: test_redis_layer, 2: test_two_daphne_redis).
REDIS_TEST_DB = 3
SHOPPERS = 6
PASSWORD = "a-good-password-123"
APPROVED_CARD = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}
FRAME_WAIT_S = 15.0
SHIPPING = {
    "full_name": "Ada Topology",
    "line1": "1 Rue du Test",
    "city": "Paris",
    "postal_code": "75001",
    "country": "FR",
    "email": "ada@example.com",
}


@pytest.fixture
def topology(transactional_db, tmp_path):
    """The topology on the test database; stopped (and checked gone) before the database is flushed."""
    redis_url = redis_url_with_db(os.environ["REDIS_URL"], REDIS_TEST_DB)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    topology = Topology(
        run_dir=tmp_path / "prod-local",
        database_url=current_database_url(),
        redis_url=redis_url,
        daphnes=3,
        bank_latency_ms=50,
    )
    started = time.monotonic()
    try:
        topology.start()
        print(f"\ntopology up in {time.monotonic() - started:.1f} s: nginx :{topology.nginx_port}, {topology.pids}")
        yield topology
    finally:
        records = dict(topology.records)
        took = topology.stop()
        print(f"topology stopped: {', '.join(f'{name} {seconds:.1f} s' for name, seconds in took.items())}")
        client.flushdb()
        client.close()
        survivors = [name for name, record in records.items() if process_start_time(record["pid"]) is not None]
        assert not survivors, f"still running after stop(): {survivors}"


@pytest.fixture
def shoppers(settings, make_user, make_product):
    """SHOPPERS accounts the servers can sign in (the real password hasher) and a product with stock."""
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    hashed = make_password(PASSWORD)  # Once: the real hasher costs ~0.3 s a call.
    users = []
    for number in range(1, SHOPPERS + 1):
        user = make_user(username=f"topo{number}")
        user.password = hashed
        user.save(update_fields=["password"])
        users.append(user)
    return users, make_product(price="9.90", stock=500)


def served_by(topology: Topology, answer) -> str:
    """The daphne (daphne1..3) that nginx says answered."""
    upstream = answer.headers.get("X-Upstream", "")
    names = {f"127.0.0.1:{port}": name for name, port in zip(topology.daphne_names, topology.daphne_ports, strict=True)}
    assert upstream in names, f"{answer.method} {answer.path} came from {upstream!r}, not a daphne of the topology"
    return names[upstream]


def checkout(shopper: HttpShopper, product) -> tuple:
    """Add the product through its page, pay through the checkout page; return the checkout POST's answer."""
    page = shopper.get(f"/products/{product.slug}/")
    added = shopper.post("/cart/add/", {**page.form(action="/cart/add/"), "product": str(product.pk), "quantity": "1"})
    assert added.status == 302, f"add to cart answered {added.status}"
    form = shopper.get("/checkout/").form(action="/checkout/")
    # What a shopper types into whichever address fields the page asks for (a <select>'s choice
    # does not show in its attributes).
    typed = {name: value for name, value in SHIPPING.items() if name in form and not form[name]}
    started = time.time()
    paid = shopper.post("/checkout/", {**form, **typed, **APPROVED_CARD})
    return paid, started, time.time()


async def open_socket(topology_url: str, ws_url: str, shopper: HttpShopper):
    cookie = "; ".join(f"{name}={value}" for name, value in shopper.cookies.items())
    socket = await connect(
        f"{ws_url}/ws/notifications/", origin=topology_url, additional_headers={"Cookie": cookie}, open_timeout=10
    )
    hello = json.loads(await asyncio.wait_for(socket.recv(), timeout=5))
    assert hello["type"] == "hello", hello
    return socket


async def collect_until(socket, wanted: int, frames: list, deadline: float) -> None:
    """Append (frame, time) for every frame until `wanted` notification frames came, or the deadline."""
    while sum(1 for frame, _at in frames if frame["type"] == "notification") < wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            raw = await asyncio.wait_for(socket.recv(), timeout=min(remaining, 0.5))
        except TimeoutError:
            continue
        frames.append((json.loads(raw), time.time()))


def page_text(answer) -> str:
    """The visible text of a page, squeezed, for an assertion message."""
    text = re.sub(r"<(script|style)[^>]*>.*?</\\1>|<[^>]+>", " ", answer.body, flags=re.S)
    return " ".join(text.split())[:1500]


def order_number(location: str) -> str:
    match = re.fullmatch(r"/orders/([A-Za-z0-9]+)/", location)
    assert match, f"the checkout redirected to {location!r}, not an order page"
    return match.group(1)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_shoppers_behind_nginx_get_their_own_notifications_whichever_process_served_them(topology, shoppers):
    users, product = shoppers
    clients = [HttpShopper(topology.url) for _user in users]
    spread = Counter()

    # Sign in and browse through nginx: the requests spread over the processes.
    for user, client in zip(users, clients, strict=True):
        spread[served_by(topology, client.get("/accounts/login/"))] += 1
        spread[served_by(topology, client.sign_in(user.username, PASSWORD))] += 1
        for _page in range(3):
            answer = client.get("/")
            assert answer.status == 200
            spread[served_by(topology, answer)] += 1
    assert set(spread) == set(topology.daphne_names), f"nginx sent requests to {dict(spread)} only"

    # Static files: hashed names, from nginx (no X-Upstream), cached for a year, gzipped on request.
    stylesheet = re.search(r'href="(/static/shop/shop\.[0-9a-f]{12}\.css)"', clients[0].get("/").body)
    assert stylesheet, "the catalog does not link a hashed stylesheet (ManifestStaticFilesStorage)"
    static = clients[0].get(stylesheet.group(1))
    assert static.status == 200 and "X-Upstream" not in static.headers
    assert static.headers.get("Cache-Control") == "public, max-age=31536000, immutable"

    async def scenario():
        sockets = [await open_socket(topology.url, topology.ws_url, client) for client in clients]
        try:
            socket_served_by = [served_by(topology, SimpleAnswer(socket)) for socket in sockets]
            frames: list[list] = [[] for _socket in sockets]
            deadline = time.monotonic() + FRAME_WAIT_S
            listeners = [
                asyncio.ensure_future(collect_until(socket, 1, seen, deadline))
                for socket, seen in zip(sockets, frames, strict=True)
            ]
            # Every shopper pays at once, through nginx.
            payments = await asyncio.gather(*(asyncio.to_thread(checkout, client, product) for client in clients))
            await asyncio.gather(*listeners)

            # One shopper's order placed on a process other than the one holding that shopper's socket.
            socket_process = socket_served_by[0]
            other = next(name for name in topology.daphne_names if name != socket_process)
            direct = HttpShopper(topology.daphne_urls[other], cookies=clients[0].cookies)
            direct_payment = await asyncio.to_thread(checkout, direct, product)
            await collect_until(sockets[0], 2, frames[0], time.monotonic() + FRAME_WAIT_S)
            return socket_served_by, payments, frames, (other, direct_payment)
        finally:
            for socket in sockets:
                await socket.close()

    socket_served_by, payments, frames, (other, direct_payment) = asyncio.run(scenario())

    checkout_served_by = []
    latencies_ms, checkout_ms, row_to_frame_ms = [], [], []
    crossed = 0
    for index, (user, (answer, started, answered_at)) in enumerate(zip(users, payments, strict=True)):
        assert answer.status == 302, f"{user.username}'s checkout answered {answer.status}: {page_text(answer)}"
        order = Order.objects.get(number=order_number(answer.location))
        assert order.user == user and order.status == Order.Status.PAID
        process = served_by(topology, answer)
        checkout_served_by.append(process)
        crossed += process != socket_served_by[index]
        notifications = [frame for frame, _at in frames[index] if frame["type"] == "notification"]
        expected = Notification.objects.get(recipient=user, url=order.get_absolute_url())
        assert [frame["id"] for frame in notifications[:1]] == [expected.pk], (
            f"{user.username} (socket on {socket_served_by[index]}, checkout on {process}) received "
            f"{notifications} within {FRAME_WAIT_S:.0f} s, expected notification {expected.pk}"
        )
        pushed_at = next(at for frame, at in frames[index] if frame["type"] == "notification")
        latencies_ms.append((pushed_at - answered_at) * 1000)
        checkout_ms.append((answered_at - started) * 1000)
        row_to_frame_ms.append((pushed_at - expected.created_at.timestamp()) * 1000)
    # Nobody received another shopper's notification.
    for index, user in enumerate(users):
        mine = set(Notification.objects.filter(recipient=user).values_list("pk", flat=True))
        received = {frame["id"] for frame, _at in frames[index] if frame["type"] == "notification"}
        assert received <= mine, f"{user.username} received notifications {received - mine} of someone else"
    assert len(set(checkout_served_by)) >= 2, f"every checkout went to {set(checkout_served_by)}"
    # Whether nginx happens to send a checkout to another process than its shopper's socket is
    # up to its balancing (it often keeps a shopper on one process), so it is only reported
    # below; the crossing itself is proven deterministically by the direct payment next.

    # The order placed directly on another process reached the socket held elsewhere.
    answer, _started, answered_at = direct_payment
    assert answer.status == 302, f"the checkout on {other} answered {answer.status}: {page_text(answer)}"
    assert "X-Upstream" not in answer.headers  # Straight to daphne, not through nginx.
    order = Order.objects.get(number=order_number(answer.location))
    expected = Notification.objects.get(recipient=users[0], url=order.get_absolute_url())
    arrivals = [
        (frame, at) for frame, at in frames[0] if frame["type"] == "notification" and frame["id"] == expected.pk
    ]
    assert arrivals, f"the order paid on {other} never reached the socket on {socket_served_by[0]}: {frames[0]}"
    cross_ms = (arrivals[0][1] - answered_at) * 1000

    # Each daphne's own access log agrees with nginx about who served the checkouts.
    logged = {name: topology.log_path(name).read_text().count('"POST /checkout/"') for name in topology.daphne_names}
    assert sum(logged.values()) == SHOPPERS + 1, logged
    assert logged[other] >= 1

    # The one worker sends every confirmation email.
    orders = list(Order.objects.filter(user__in=users).values_list("pk", flat=True))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sent = DBTaskResult.objects.filter(
            task_path=tasks.send_order_confirmation.module_path, status="SUCCESSFUL"
        ).count()
        if sent >= len(orders):
            break
        time.sleep(0.2)
    assert sent == len(orders) == SHOPPERS + 1, (
        f"the worker sent {sent} of {len(orders)} emails:\n{topology.log_tail('worker')}"
    )

    latencies_ms.sort()
    checkout_ms.sort()
    row_to_frame_ms.sort()
    print(
        f"requests spread over the processes: {dict(sorted(spread.items()))}; "
        f"sockets on {dict(sorted(Counter(socket_served_by).items()))}; "
        f"checkouts on {dict(sorted(Counter(checkout_served_by).items()))} "
        f"({len(set(checkout_served_by))} processes, {crossed} of {SHOPPERS} on another process than the socket); "
        f"checkout POST through nginx (bank 50 ms): median {checkout_ms[len(checkout_ms) // 2]:.0f} ms, "
        f"max {checkout_ms[-1]:.0f} ms; notifications delivered {SHOPPERS}/{SHOPPERS}: row written -> frame "
        f"median {row_to_frame_ms[len(row_to_frame_ms) // 2]:.0f} ms, max {row_to_frame_ms[-1]:.0f} ms; frame vs "
        f"the checkout's response median {latencies_ms[len(latencies_ms) // 2]:+.0f} ms, max {latencies_ms[-1]:+.0f} ms; "
        f"order on {other} directly -> socket on {socket_served_by[0]}: {cross_ms:+.0f} ms; "
        f"daphne logs count checkouts {logged}; emails sent {sent}"
    )


class SimpleAnswer:
    """The handshake response of a socket, shaped like an Answer for served_by()."""

    def __init__(self, socket):
        self.method, self.path = "GET", "/ws/notifications/"
        self.headers = dict(socket.response.headers.raw_items())


# make prod-local / make prod-local-stop: exactly the recorded processes, never another ----------------


@pytest.fixture
def bystander():
    """A process nobody recorded, that must outlive every stop."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def record_state(run_dir, processes: dict[str, dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "url": "http://127.0.0.1:1",
        "nginx_port": 1,
        "daphne_ports": [],
        "database_url": "sqlite:///unused",
        "redis_url": "redis://127.0.0.1:1/0",
        "processes": processes,
    }
    (run_dir / "state.json").write_text(json.dumps(state))


def test_stop_leaves_alone_a_process_that_took_a_recorded_pid(tmp_path, bystander):
    # The recorded process died and the kernel gave its PID to another: the start time differs.
    record = {"pid": bystander.pid, "start_time": process_start_time(bystander.pid) - 1, "port": None}
    record_state(tmp_path, {"worker": record})

    assert prod_local.main(["stop", "--run-dir", str(tmp_path)]) == 0

    assert bystander.poll() is None, "stop killed a process it had not started"
    assert not (tmp_path / "state.json").exists()


def test_stop_stops_a_recorded_process(tmp_path, bystander):
    record = {"pid": bystander.pid, "start_time": process_start_time(bystander.pid), "port": None}
    record_state(tmp_path, {"worker": record})

    assert prod_local.main(["stop", "--run-dir", str(tmp_path)]) == 0

    assert bystander.wait(timeout=5) is not None


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_starting_prod_local_twice_leaves_only_the_second_run_and_stop_ends_it(tmp_path, bystander, capsys):
    run_dir = tmp_path / "prod-local"
    redis_url = redis_url_with_db(os.environ["REDIS_URL"], REDIS_TEST_DB)
    command = ["--run-dir", str(run_dir), "--database-url", current_database_url(), "--redis-url", redis_url]
    command += ["--daphnes", "2"]
    runs = []

    def alive(records: dict[str, dict]) -> set[str]:
        return {name for name, record in records.items() if process_start_time(record["pid"]) == record["start_time"]}

    try:
        for _run in range(2):
            started = time.monotonic()
            assert prod_local.main(["start", *command]) == 0, capsys.readouterr()
            state = json.loads((run_dir / "state.json").read_text())
            runs.append((state["processes"], time.monotonic() - started))
            url = capsys.readouterr().out.strip().splitlines()[-1]
            assert url == state["url"] and re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        (first, first_s), (second, second_s) = runs
        assert set(second) == {"daphne1", "daphne2", "worker", "nginx"}
        assert alive(first) == set(), f"the first run's {alive(first)} outlived the second start"
        assert alive(second) == set(second)
    finally:
        assert prod_local.main(["stop", *command[:2]]) == 0

    assert alive(second) == set(), f"still running after stop: {alive(second)}"
    assert not (run_dir / "state.json").exists()
    assert bystander.poll() is None
    print(f"prod-local start (migrate, seed_demo, collectstatic, 4 processes): {first_s:.1f} s, again {second_s:.1f} s")

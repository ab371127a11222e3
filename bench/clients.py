"""The bench's clients: each kind runs in a process of its own, never in the server's.

A client process runs one asyncio loop. The harness talks to it over a multiprocessing pipe:
it sends commands ({"op": ...}) and gets one answer per command. Every answer carries the
process's CPU time so far (`cpu_s`, user + system) and its age (`wall_s`), so a saturated
client shows in the results. Every wait is bounded.
"""

import asyncio
import contextlib
import json
import os
import re
import resource
import threading
import time
from multiprocessing.connection import Connection

import websockets.asyncio.client as ws_client
from shop_client import Shopper, ShopperError, paid

HELLO_TIMEOUT_S = 30.0
PUSH_WAIT_S = 5.0


def page_problem(html: str) -> str:
    """The form errors or notices a page shows, in one line (why a checkout did not go through)."""
    found = re.findall(r'class="(?:errorlist|form-errors|notice)[^"]*"[^>]*>(.*?)</(?:ul|div)>', html, re.S)
    return " / ".join(" ".join(re.sub(r"<[^>]+>", " ", item).split()) for item in found)[:300]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Control:
    """The pipe to the harness, read in a thread so the loop keeps serving sockets meanwhile."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.started = time.monotonic()

    async def command(self) -> dict:
        return await asyncio.get_running_loop().run_in_executor(None, self.connection.recv)

    def answer(self, **fields) -> None:
        self.connection.send(
            {**fields, "cpu_s": round(cpu_seconds(), 3), "wall_s": round(time.monotonic() - self.started, 3)}
        )


def main(kind: str, conf: dict, connection: Connection, *extra) -> None:
    """Entry point of a client process."""
    control = Control(connection)
    try:
        asyncio.run(KINDS[kind](conf, control, *extra))
    except Exception as error:  # Tell the harness why, instead of leaving it waiting.
        with contextlib.suppress(OSError):
            control.answer(fatal=f"{type(error).__name__}: {error}")
        raise


# Idle authenticated sockets ----------------------------------------------------------------------


class HeldSocket:
    """One open notifications socket and what arrived on it."""

    def __init__(self, index: int):
        self.index = index
        self.socket = None
        self.hello: dict | None = None
        self.frames: list[tuple[float, int, int]] = []  # (arrival time.time(), id, seq)
        self.replayed: list[int] = []
        self.replay_done = asyncio.Event()
        self.reader: asyncio.Task | None = None
        self.replaying = False

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.socket:
                arrived = time.time()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "notification":
                    if self.replaying:
                        self.replayed.append(frame["id"])
                    else:
                        self.frames.append((arrived, frame["id"], frame["seq"]))
                elif kind == "replayed":
                    self.replay_done.set()

    def last_contiguous_seq(self) -> int:
        """The highest seq up to which this socket has every notification (as the browser client keeps it)."""
        have = {seq for _, _, seq in self.frames}
        seq = self.hello.get("last_seq", 0) if self.hello else 0
        while seq + 1 in have:
            seq += 1
        return seq


async def open_socket(url: str, origin: str, session_key: str) -> tuple[object, dict]:
    socket = await ws_client.connect(
        url,
        origin=origin,
        additional_headers={"Cookie": f"sessionid={session_key}"},
        open_timeout=HELLO_TIMEOUT_S,
        close_timeout=1,
        # An idle browser tab sends nothing but its 25 s heartbeat; the bench's sockets stay silent.
        ping_interval=None,
        max_size=2**20,
    )
    hello = json.loads(await asyncio.wait_for(socket.recv(), HELLO_TIMEOUT_S))
    if hello.get("type") != "hello":
        await socket.close()
        raise ShopperError(f"first frame {hello!r} is not hello (close code {socket.close_code})")
    return socket, hello


async def hold_sockets(conf: dict, control: Control) -> None:
    """Open authenticated sockets on demand and keep them; report what arrives on them.

    conf: port, session_keys (one per socket), concurrency (handshakes in flight at once).
    """
    port, keys = conf["port"], conf["session_keys"]
    url, origin = f"ws://127.0.0.1:{port}/ws/notifications/", f"http://127.0.0.1:{port}"
    held: list[HeldSocket] = []
    gate = asyncio.Semaphore(conf.get("concurrency", 50))

    async def connect_one(index: int) -> tuple[float, float, str | None]:
        async with gate:
            started = time.time()
            entry = HeldSocket(index)
            try:
                entry.socket, entry.hello = await open_socket(url, origin, keys[index])
            except Exception as error:
                return started, time.time(), f"{type(error).__name__}: {error}"[:200]
            entry.reader = asyncio.create_task(entry.read())
            held.append(entry)
            return started, time.time(), None

    while True:
        command = await control.command()
        op = command["op"]
        if op == "connect":
            first, count = len(held), command["count"]
            if first + count > len(keys):
                count = len(keys) - first
            results = await asyncio.gather(*(connect_one(index) for index in range(first, first + count)))
            errors = [error for _, _, error in results if error]
            control.answer(
                opened=len(results) - len(errors),
                failed=len(errors),
                errors=sorted(set(errors))[:5],
                first_start=min((start for start, _, _ in results), default=None),
                last_done=max((end for _, end, _ in results), default=None),
                handshake_s=[round(end - start, 4) for start, end, error in results if not error][:2000],
                held=len(held),
            )
        elif op == "frames":
            frames = [(entry.index, *frame) for entry in held for frame in entry.frames]
            control.answer(frames=frames, held=len(held), closed=sum(1 for e in held if e.reader.done()))
        elif op == "resume":
            # As the browser client does after a gap: resume from the last contiguous seq.
            async def resume(entry: HeldSocket, timeout: float = command.get("timeout", 30)) -> None:
                entry.replaying = True
                entry.replay_done.clear()
                with contextlib.suppress(Exception):
                    await entry.socket.send(json.dumps({"type": "resume", "after_seq": entry.last_contiguous_seq()}))
                    await asyncio.wait_for(entry.replay_done.wait(), timeout)
                entry.replaying = False

            await asyncio.gather(*(resume(entry) for entry in held))
            control.answer(
                replayed=[(entry.index, entry.replayed) for entry in held],
                unanswered=sum(1 for entry in held if not entry.replay_done.is_set()),
            )
        elif op == "close":
            await asyncio.gather(*(entry.socket.close() for entry in held), return_exceptions=True)
            for entry in held:
                entry.reader.cancel()
            control.answer(closed=len(held))
            return
        else:
            control.answer(error=f"unknown op {op}")


# A buyer who watches their own socket ------------------------------------------------------------


async def buyer_probe(conf: dict, control: Control) -> None:
    """Place orders one after another and note when each one's notification frame arrives.

    conf: port, session_key, username, product. The push latency itself is computed by the
    harness from the server's commit log (same machine, same clock: time.time()).
    """
    port = conf["port"]
    shopper = Shopper(port, conf["username"], session_key=conf["session_key"])
    socket, hello = await open_socket(
        f"ws://127.0.0.1:{port}/ws/notifications/", f"http://127.0.0.1:{port}", conf["session_key"]
    )
    arrivals: dict[str, tuple[float, int]] = {}
    arrived = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(Exception):
            async for raw in socket:
                now = time.time()
                frame = json.loads(raw)
                if frame.get("type") == "notification":
                    arrivals[frame.get("url", "")] = (now, frame["id"])
                    arrived.set()

    reader = asyncio.create_task(read())
    control.answer(ready=True, hello=hello)
    try:
        while True:
            command = await control.command()
            if command["op"] == "close":
                control.answer(closed=True)
                return
            pushes, missing, errors = [], 0, []
            deadline = time.monotonic() + command.get("budget_s", 60)
            for _ in range(command["count"]):
                if time.monotonic() > deadline or reader.done():
                    break
                try:
                    done = await shopper.pay(await shopper.prepare_checkout(conf["product"]))
                except (ShopperError, OSError, asyncio.TimeoutError) as error:
                    errors.append(str(error)[:200])
                    continue
                path = done.location_path
                wait_until = time.monotonic() + PUSH_WAIT_S
                while path not in arrivals and time.monotonic() < wait_until:
                    arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(arrived.wait(), max(0.01, wait_until - time.monotonic()))
                if path in arrivals:
                    when, notification_id = arrivals[path]
                    pushes.append((notification_id, when, done.arrived_at))
                else:
                    missing += 1
            control.answer(pushes=pushes, missing=missing, errors=errors[:5], error_count=len(errors))
    finally:
        reader.cancel()
        await socket.close()
        await shopper.close()


# Concurrent checkouts --------------------------------------------------------------------------------


async def checkout_wave(conf: dict, control: Control, go) -> None:
    """Shoppers fill their carts and open the checkout, then all pay at once when `go` is set.

    conf: port, shoppers [(username, session_key, product_id)], timeout.
    """
    port = conf["port"]
    shoppers = [
        Shopper(port, name, session_key=key, timeout=conf.get("timeout", 120)) for name, key, _ in conf["shoppers"]
    ]
    gate = asyncio.Semaphore(16)

    async def prepare(shopper: Shopper, product: int):
        async with gate:
            try:
                return await shopper.prepare_checkout(product)
            except (ShopperError, OSError, asyncio.TimeoutError) as error:
                return ShopperError(str(error))

    forms = await asyncio.gather(*(prepare(s, p) for s, (_, _, p) in zip(shoppers, conf["shoppers"], strict=True)))
    prepare_errors = [str(form) for form in forms if isinstance(form, Exception)]
    control.answer(ready=True, prepare_errors=prepare_errors[:5], prepare_error_count=len(prepare_errors))
    await asyncio.get_running_loop().run_in_executor(None, go.wait, 120)

    async def pay(shopper: Shopper, form) -> dict:
        if isinstance(form, Exception):
            return {"status": None, "error": "not prepared"}
        started = time.time()
        try:
            done = await shopper.post("/checkout/", form)
        except (ShopperError, OSError, asyncio.TimeoutError) as error:
            return {"status": None, "error": str(error)[:200], "started": started, "finished": time.time()}
        return {
            "status": done.status,
            "paid": paid(done),
            "problem": "" if paid(done) else page_problem(done.body),
            "location": done.location_path,
            "started": started,
            "finished": done.arrived_at,
        }

    results = await asyncio.gather(*(pay(s, f) for s, f in zip(shoppers, forms, strict=True)))
    await asyncio.gather(*(s.close() for s in shoppers))
    control.answer(results=results)


# Catalog pages, one after another --------------------------------------------------------------------


async def catalog_reader(conf: dict, control: Control) -> None:
    """GET / one after another (an anonymous visitor) until told to stop, or at the count or time limit."""
    visitor = Shopper(conf["port"])
    while True:
        command = await control.command()
        if command["op"] == "close":
            await visitor.close()
            control.answer(closed=True)
            return
        stop = asyncio.Event()
        timings: list[tuple[float, float]] = []
        errors: list[str] = []

        task = asyncio.create_task(read_pages(visitor, command, stop, timings, errors))
        if command.get("until_stopped"):
            control.answer(started=True)
            await control.command()  # {"op": "stop"}
            stop.set()
        await task
        control.answer(timings=timings, errors=errors[:5], error_count=len(errors))


async def read_pages(visitor: Shopper, command: dict, stop: asyncio.Event, timings: list, errors: list) -> None:
    deadline = time.monotonic() + command.get("max_s", 60)
    while not stop.is_set() and len(timings) < command.get("max_count", 10000) and time.monotonic() < deadline:
        try:
            page = await visitor.get("/")
        except (ShopperError, OSError, asyncio.TimeoutError) as error:
            errors.append(str(error)[:200])
            await asyncio.sleep(0.05)
            continue
        if page.status != 200:
            errors.append(f"GET / answered {page.status}")
        timings.append((time.time(), page.seconds))
        if command.get("pause_s"):
            await asyncio.sleep(command["pause_s"])


# Checkouts interleaved across servers ----------------------------------------------------------------


async def interleaved_checkouts(conf: dict, control: Control) -> None:
    """One real (logged-in) shopper per server; orders go round-robin; only the checkout POST is timed.

    The servers run side by side, so the machine's noise from second to second falls on each alike.
    conf: servers [{"key", "port", "username", "every"}], password, product, rounds, warmup,
    budget_s. A server with `every` n takes part in one round in n (the synchronous baseline's
    checkouts take seconds each: a few of them show its cost, and the rounds they would take go
    to the fast modes, whose p50s are compared within a few percent).
    """
    shoppers = {}
    for server in conf["servers"]:
        shopper = Shopper(server["port"], server["username"])
        await shopper.log_in(conf["password"])
        shoppers[server["key"]] = shopper
    times: dict[str, list[float]] = {key: [] for key in shoppers}
    errors: dict[str, list[str]] = {key: [] for key in shoppers}
    for _ in range(conf["warmup"]):
        for shopper in shoppers.values():
            await shopper.pay(await shopper.prepare_checkout(conf["product"]))
    keys = list(shoppers)
    every = {server["key"]: server.get("every", 1) for server in conf["servers"]}
    deadline = time.monotonic() + conf["budget_s"]
    rounds = 0
    while rounds < conf["rounds"] and time.monotonic() < deadline:
        rounds += 1
        shift = rounds % len(keys)  # rotate who goes first: nobody always follows the same neighbour
        for key in keys[shift:] + keys[:shift]:
            if rounds % every[key]:
                continue
            shopper = shoppers[key]
            try:
                done = await shopper.pay(await shopper.prepare_checkout(conf["product"]))
            except (ShopperError, OSError, asyncio.TimeoutError) as error:
                errors[key].append(str(error)[:200])
                continue
            times[key].append(done.seconds)
    for shopper in shoppers.values():
        await shopper.close()
    control.answer(rounds=rounds, times=times, errors={key: value[:5] for key, value in errors.items()})


# Cart sockets that wait for a sold-out signal (cart_fanout) ------------------------------------------


async def cart_sockets(conf: dict, control: Control) -> None:
    """Hold one /ws/cart/ socket per anonymous cart session; note when each hears its line sold out.

    conf: port, session_keys (one cart's session each), concurrency (handshakes in flight). The
    first answer comes once every socket has had its `hello`. Then: `arm` forgets what was
    heard and starts noting (time.time() of each socket's first `lines` frame with a sold_out
    line); `heard` waits until every socket heard, or `timeout` seconds, and returns the times;
    `close`.
    """
    port, keys = conf["port"], conf["session_keys"]
    url, origin = f"ws://127.0.0.1:{port}/ws/cart/", f"http://127.0.0.1:{port}"
    gate = asyncio.Semaphore(conf.get("concurrency", 16))
    sockets: list = []
    readers: list[asyncio.Task] = []
    heard: dict[int, float] = {}
    everyone = asyncio.Event()
    armed = False

    async def listen(index: int, socket) -> None:
        with contextlib.suppress(Exception):
            async for raw in socket:
                arrived = time.time()
                frame = json.loads(raw)
                if not armed or index in heard or frame.get("type") != "lines":
                    continue
                if any(line.get("state") == "sold_out" for line in frame.get("lines", [])):
                    heard[index] = arrived
                    if len(heard) == len(sockets):
                        everyone.set()

    async def connect(key: str) -> str | None:
        async with gate:
            for attempt in range(1, 6):
                try:
                    socket = await ws_client.connect(
                        url,
                        origin=origin,
                        additional_headers={"Cookie": f"sessionid={key}"},
                        open_timeout=HELLO_TIMEOUT_S,
                        close_timeout=1,
                        ping_interval=None,
                        max_queue=None,
                    )
                    hello = json.loads(await asyncio.wait_for(socket.recv(), HELLO_TIMEOUT_S))
                except Exception as error:
                    # A burst of handshakes can overflow daphne's listen backlog: retry, as a page would.
                    if attempt == 5:
                        return f"{type(error).__name__}: {error}"[:200]
                    await asyncio.sleep(0.2 * attempt)
                    continue
                if hello.get("type") != "hello":
                    await socket.close()
                    return f"first frame {str(hello)[:100]} is not hello"
                readers.append(asyncio.create_task(listen(len(sockets), socket)))
                sockets.append(socket)
                return None
        return "unreachable"

    started = time.time()
    errors = [error for error in await asyncio.gather(*(connect(key) for key in keys)) if error]
    control.answer(
        opened=len(sockets),
        failed=len(errors),
        errors=sorted(set(errors))[:5],
        connect_s=round(time.time() - started, 3),
    )
    while True:
        command = await control.command()
        if command["op"] == "arm":
            heard.clear()
            everyone.clear()
            armed = True
            control.answer(armed=len(sockets))
        elif command["op"] == "heard":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(everyone.wait(), command.get("timeout", 60))
            armed = False
            control.answer(
                heard=sorted(heard.values()),
                expected=len(sockets),
                closed=sum(1 for reader in readers if reader.done()),
            )
        elif command["op"] == "close":
            await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
            for reader in readers:
                reader.cancel()
            control.answer(closed=len(sockets))
            return
        else:
            control.answer(error=f"unknown op {command['op']}")


# Notifications written at a steady rate (escalation_timer) ----------------------------------------------


async def notification_writer(conf: dict, control: Control) -> None:
    """Write notifications through notify() at an even rate, as the shop's own code does, then answer once.

    The one client with Django: it sets Django up on the run's database (conf env) in this
    process, so the load is not the harness's. conf: env, user_ids, count, seconds, writers
    (threads, each notify() its own transaction: the row, the stream lock, the email task),
    read_share (that share is marked read at once: its email must not go out).
    """
    os.environ.update(conf["env"])
    os.environ.pop("REDIS_URL", None)  # The pushes go nowhere: no socket listens in this scenario.
    import django

    django.setup()
    answer = await asyncio.to_thread(write_notifications, conf)
    control.answer(**answer)


def write_notifications(conf: dict) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connections, transaction
    from django.utils import timezone

    from notifications import services
    from notifications.models import Notification

    count, seconds, writers = conf["count"], conf["seconds"], conf["writers"]
    users = list(get_user_model().objects.filter(pk__in=conf["user_ids"]).order_by("pk"))
    connections.close_all()
    every = max(1, round(1 / conf["read_share"])) if conf["read_share"] > 0 else 0
    written: list[int] = []
    read: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()

    def writer(number: int) -> None:
        try:
            for index in range(number, count, writers):
                wait = start + seconds * index / count - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    with transaction.atomic():
                        notification = services.notify(
                            recipient=users[index % len(users)],
                            kind=Notification.Kind.ORDER_SHIPPED,
                            title=f"Order B{index:05d} has shipped",
                            url="/orders/",
                        )
                    marked = bool(every) and index % every == 0
                    if marked:
                        Notification.objects.filter(pk=notification.pk).update(read_at=timezone.now())
                except Exception as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}"[:200])
                    continue
                with lock:
                    written.append(notification.pk)
                    if marked:
                        read.append(notification.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "written": written,
        "read": read,
        "written_s": round(time.monotonic() - start, 3),
        "errors": errors[:5],
        "error_count": len(errors),
    }


KINDS = {
    "sockets": hold_sockets,
    "buyer": buyer_probe,
    "wave": checkout_wave,
    "catalog": catalog_reader,
    "interleaved": interleaved_checkouts,
    "carts": cart_sockets,
    "notifier": notification_writer,
}

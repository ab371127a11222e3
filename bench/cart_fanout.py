"""Benchmark: one purchase of a product held in 1000 carts -> time until the last cart's socket hears.

    python bench/cart_fanout.py [--carts 1000] [--rounds 3] [--client-processes 4]
                                [--redis redis://127.0.0.1:6379/5] [--postgres postgres://postgres@127.0.0.1:5432/postgres]

Setup (in this process, on a throw-away database): a Burr Grinder with 1 unit in stock, N
anonymous carts holding 1 each (each with its own session, as N visitors' browsers would
have), and a buyer whose cart holds the last unit. One daphne serves the shop. Client
processes (separate from the server and from this one) open one /ws/cart/ socket per cart,
with that cart's session cookie, and wait for its `hello`. Then this process buys the last
unit through the real checkout (GET /checkout/, POST /checkout/ with the test card) and every
client notes, with the machine's wall clock, when its socket's `lines` frame says sold out.

Reported per round, from the moment the checkout POST was sent: the first, median, p90, p99
and last cart's signal, how many of the N arrived, and the POST's own time. The fan-out runs
after the stock change commits (transaction 1 of the checkout, before the bank), so the last
signal can arrive before the POST's response. Each round then puts 1 unit back and refills
the buyer's cart. Results go to bench/results/cart_fanout.json (git-ignored).

Exit code 0: every signal arrived in every round; 1: some never did (within 60 s); 2: the
benchmark could not run.
"""

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import (  # noqa: E402
    RESULTS,
    ROOT,
    Child,
    ThrowawayDatabase,
    bench_environment,
    machine,
    percentile,
    raise_open_files_limit,
    reexec_in_venv,
    setup_django,
    start_daphne,
)

SIGNAL_TIMEOUT = 60.0
HANDSHAKES_AT_ONCE = 25  # per client process


# Client processes ------------------------------------------------------------------------------


async def run_clients(port: int, cookies: list[str], out: Path) -> None:
    """Open one cart socket per cookie, say READY, note when each hears "sold out", write the times."""
    import websockets.asyncio.client as ws_client
    from websockets.exceptions import WebSocketException

    heard: dict[int, float] = {}
    ready = asyncio.Event()
    connected = 0
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    everyone_heard = asyncio.Event()
    sockets = []

    async def follow(index: int, cookie: str) -> None:
        nonlocal connected
        async with gate:
            for attempt in range(1, 6):
                try:
                    socket = await ws_client.connect(
                        f"ws://127.0.0.1:{port}/ws/cart/",
                        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": f"http://127.0.0.1:{port}"},
                        open_timeout=30,
                        ping_interval=None,
                        max_queue=None,
                    )
                    break
                except (OSError, WebSocketException):
                    # daphne's listen backlog (50) overflows under a burst of handshakes: retry, as a page would.
                    if attempt == 5:
                        raise
                    await asyncio.sleep(0.2 * attempt)
            sockets.append(socket)
            hello = json.loads(await socket.recv())
            assert hello["type"] == "hello", hello
        connected += 1
        if connected == len(cookies):
            ready.set()
        async for raw in socket:
            frame = json.loads(raw)
            if frame.get("type") == "lines" and any(line["state"] == "sold_out" for line in frame["lines"]):
                heard.setdefault(index, time.time())
                if len(heard) == len(cookies):
                    everyone_heard.set()
                return

    tasks = [asyncio.create_task(follow(index, cookie)) for index, cookie in enumerate(cookies)]
    await asyncio.wait_for(ready.wait(), timeout=120)
    print("READY", flush=True)
    try:
        await asyncio.wait_for(everyone_heard.wait(), timeout=SIGNAL_TIMEOUT + 30)
    except asyncio.TimeoutError:
        pass
    out.write_text(json.dumps({"heard": list(heard.values()), "expected": len(cookies)}))
    for task in tasks:
        task.cancel()
    for socket in sockets:
        await socket.close()


def client_main(args) -> None:
    raise_open_files_limit()
    cookies = json.loads(Path(args.cookies).read_text())[args.slice_start : args.slice_end]
    asyncio.run(run_clients(args.port, cookies, Path(args.out)))


# Setup and the purchase --------------------------------------------------------------------------


def make_data(carts: int) -> tuple[list[str], str, int]:
    """The product, N anonymous carts with their sessions, and the buyer's signed-in session."""
    from datetime import timedelta

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from shop import services
    from shop.models import Cart, CartLine, Product

    product = Product.objects.create(name="Burr Grinder", slug="burr-grinder", price="89.00", stock=1)
    anonymous = Cart.objects.bulk_create([Cart() for _ in range(carts)])
    CartLine.objects.bulk_create([CartLine(cart=cart, product=product, quantity=1) for cart in anonymous])
    store = SessionStore()
    expires = timezone.now() + timedelta(days=1)
    keys = [store._get_new_session_key() for _ in anonymous]
    Session.objects.bulk_create(
        Session(session_key=key, session_data=store.encode({"cart_id": cart.pk}), expire_date=expires)
        for key, cart in zip(keys, anonymous, strict=True)
    )
    buyer = get_user_model().objects.create_user("buyer", "buyer@example.com", "bench-pass-1")
    services.add_to_cart(cart=services.get_cart(user=buyer, create=True), product=product, quantity=1)
    session = SessionStore()
    session.update(
        {
            SESSION_KEY: str(buyer.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: buyer.get_session_auth_hash(),
        }
    )
    session.create()
    return keys, session.session_key, product.pk


def reset_round(product_id: int) -> None:
    """Put the unit back and refill the buyer's cart for the next round."""
    from django.contrib.auth import get_user_model

    from shop import services
    from shop.models import Product

    product = Product.objects.get(pk=product_id)
    services.receive_stock(product=product, quantity=1, note="bench: next round")
    buyer = get_user_model().objects.get(username="buyer")
    services.add_to_cart(cart=services.get_cart(user=buyer, create=True), product=product, quantity=1)


def checkout(port: int, session_key: str) -> tuple[float, float]:
    """Buy the buyer's cart through the real pages; return (POST sent at, response received at)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    cookie = f"sessionid={session_key}"
    connection.request("GET", "/checkout/", headers={"Cookie": cookie})
    response = connection.getresponse()
    page = response.read().decode()
    if response.status != 200:
        raise RuntimeError(f"GET /checkout/ answered {response.status}")
    csrf_cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "")
    token = re.search(r'name="checkout_token" value="([^"]+)"', page).group(1)
    form_csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    csrf = csrf_cookie.group(1) if csrf_cookie else form_csrf
    body = urllib.parse.urlencode(
        {
            "full_name": "Bench Buyer",
            "line1": "1 Bench Street",
            "line2": "",
            "city": "Paris",
            "postal_code": "75001",
            "country": "FR",
            "phone": "",
            "email": "buyer@example.com",
            "number": "4242 4242 4242 4242",
            "expiry": "12/39",
            "cvc": "123",
            "checkout_token": token,
            "csrfmiddlewaretoken": form_csrf,
        }
    )
    headers = {
        "Cookie": f"{cookie}; csrftoken={csrf}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://127.0.0.1:{port}",
        "Referer": f"http://127.0.0.1:{port}/checkout/",
    }
    sent = time.time()
    connection.request("POST", "/checkout/", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    answered = time.time()
    if response.status != 302 or "/orders/" not in (response.getheader("Location") or ""):
        raise RuntimeError(f"POST /checkout/ answered {response.status} {response.getheader('Location')}")
    return sent, answered


def run_round(*, port: int, cookies_file: Path, carts: int, processes: int, env: dict, log_dir: Path, buyer: str):
    slices = [(carts * i // processes, carts * (i + 1) // processes) for i in range(processes)]
    clients = []
    for number, (start, end) in enumerate(slices):
        out = log_dir / f"client-{number}.json"
        out.unlink(missing_ok=True)
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--client",
            "--port",
            str(port),
            "--cookies",
            str(cookies_file),
            "--slice-start",
            str(start),
            "--slice-end",
            str(end),
            "--out",
            str(out),
        ]
        clients.append((Child(f"client-{number}", command, env=env, log_dir=log_dir).start(), out))
    deadline = time.monotonic() + 180
    for client, _ in clients:
        while "READY" not in client.log_path.read_text(errors="replace"):
            if client.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{client.name} never got ready:\n{client.log_tail()}")
            time.sleep(0.05)
    sent, answered = checkout(port, buyer)
    heard: list[float] = []
    for client, out in clients:
        try:
            client.process.wait(timeout=SIGNAL_TIMEOUT + 60)
        except Exception:
            client.stop()
        if out.exists():
            heard += json.loads(out.read_text())["heard"]
        client.stop()
    latencies = sorted((at - sent) * 1000 for at in heard)
    return {
        "carts": carts,
        "signals": len(latencies),
        "checkout_post_ms": round((answered - sent) * 1000, 1),
        "first_ms": round(latencies[0], 1) if latencies else None,
        "p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
        "p90_ms": round(percentile(latencies, 0.90), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "last_ms": round(latencies[-1], 1) if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument(
        "--redis", help="channel layer on this Redis (e.g. redis://127.0.0.1:6379/5); its data is not flushed"
    )
    parser.add_argument(
        "--postgres", help="a PostgreSQL server URL: a database is created on it for the run, then dropped"
    )
    # Client-process arguments (internal).
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cookies", help=argparse.SUPPRESS)
    parser.add_argument("--slice-start", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slice-end", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return 0

    raise_open_files_limit()
    database = ThrowawayDatabase(args.postgres).create()
    server = None
    try:
        env = bench_environment(database, redis_url=args.redis)
        setup_django()
        started = time.monotonic()
        keys, buyer, product_id = make_data(args.carts)
        cookies_file = database.dir / "cookies.json"
        cookies_file.write_text(json.dumps(keys))
        print(f"{args.carts} carts and sessions ready in {time.monotonic() - started:.1f} s", flush=True)
        server, port = start_daphne(env, database.dir)
        layer = f"Redis {args.redis}" if args.redis else "in-memory layer"
        engine = "PostgreSQL" if args.postgres else "SQLite"
        print(f"daphne on 127.0.0.1:{port} ({layer}, {engine}); {args.client_processes} client processes", flush=True)
        rounds = []
        for number in range(1, args.rounds + 1):
            result = run_round(
                port=port,
                cookies_file=cookies_file,
                carts=args.carts,
                processes=args.client_processes,
                env=env,
                log_dir=database.dir,
                buyer=buyer,
            )
            rounds.append(result)
            print(
                f"round {number}: {result['signals']}/{args.carts} carts heard; from the checkout POST: "
                f"first {result['first_ms']} ms, median {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
                f"p99 {result['p99_ms']} ms, last {result['last_ms']} ms (the POST took {result['checkout_post_ms']} ms)",
                flush=True,
            )
            reset_round(product_id)
    except Exception as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        if server is not None:
            print(server.log_tail(), file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
        from django.db import connections

        connections.close_all()
        database.drop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "cart_fanout",
        "layer": "redis" if args.redis else "in-memory",
        "database": "postgresql" if args.postgres else "sqlite",
        "client_processes": args.client_processes,
        "machine": machine(),
        "rounds": rounds,
    }
    (RESULTS / "cart_fanout.json").write_text(json.dumps(report, indent=2))
    print(f"written to {(RESULTS / 'cart_fanout.json').relative_to(ROOT)}")
    return 0 if all(result["signals"] == args.carts for result in rounds) else 1


if __name__ == "__main__":
    reexec_in_venv()
    sys.exit(main())

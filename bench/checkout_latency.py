"""Benchmark: the checkout never waits for the notification, and a slow bank holds no thread.

Run with `make bench` or `python bench/checkout_latency.py [--orders N] [--skip-redis] [--parts 123]`.
Every server is a real daphne on a free 127.0.0.1 port, sharing one throw-away SQLite
database. Three parts, each reported as ratios measured within this one run:

1. Checkout POST time with the channel layer (a) in memory, (b) on a healthy Redis,
   (c) on a "Redis" that accepts connections and never answers, (d) on a refused port.
   The four servers run side by side and the orders are interleaved round-robin, so the
   machine's noise falls on every scenario alike. FAIL if a median is > 1.5x the baseline.
2. Commit-to-push latency: a WebSocket client as the buyer times each order's push, from
   the notification's created_at and from the checkout response's arrival.
3. A slow bank (1 s) and 30 concurrent checkouts: catalog pages stay fast (FAIL if their
   median is >= 3x the idle one, or if one page took as long as a bank call) and the 30
   checkouts end together (FAIL past a third of the 30 s they would take one at a time).

See bench/README.md for how to read the output. Exit code 1 on any FAIL.
"""

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"

try:
    import websockets.asyncio.client as ws_client
    from websockets.exceptions import WebSocketException
except ImportError:  # Started with a Python outside the project's virtualenv: use the virtualenv's.
    if (
        (VENV / "bin" / "python").exists()
        and Path(sys.prefix).resolve() != VENV.resolve()
        and not os.environ.get("BENCH_REEXEC")
    ):
        os.environ["BENCH_REEXEC"] = "1"
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])
    raise SystemExit(
        "The benchmark needs the `websockets` package: run it with .venv/bin/python (make bench)."
    ) from None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_servers import (  # noqa: E402
    BlackHoleServer,
    DaphneServer,
    cpu_count,
    flush_redis_db,
    free_port,
    redis_reachable,
    run_manage,
)
from shop_client import Shopper, ShopperError  # noqa: E402

PYTHON = VENV / "bin" / "python"
DAPHNE = VENV / "bin" / "daphne"
PASSWORD = "bench-pass-1"
CUSTOMERS = 40
REDIS_PORT = 6379
REDIS_DB = 3
RATIO_LIMIT_CHECKOUT = 1.5
RATIO_LIMIT_CATALOG = 3.0
WALL_LIMIT_FRACTION = 1 / 3  # of the time the concurrent checkouts would take one at a time
WARMUP_ORDERS = 3
SCENARIO_BUDGET_S = 30.0  # every loop stops at its count or at its time budget, whichever comes first
PUSH_WAIT_S = 5.0
DISPATCH_TIMEOUT_S = 2.0  # settings.NOTIFICATIONS_DISPATCH_TIMEOUT
SLOW_BANK_MS = 1000
CONCURRENT_CHECKOUTS = 30
CATALOG_REQUESTS = 30
RESULTS = ROOT / "bench" / "results"


# Statistics ---------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 50 samples is the 48th smallest)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = [value * 1000 for value in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "max_ms": round(max(ms), 2),
        "min_ms": round(min(ms), 2),
    }


def ratio(numerator: dict, denominator: dict) -> float | None:
    if not numerator.get("n") or not denominator.get("n"):
        return None
    return round(numerator["p50_ms"] / denominator["p50_ms"], 2)


# Set-up -------------------------------------------------------------------------------


def base_env(database_path: Path) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DATABASE_URL", "DJANGO_SECRET_KEY", "SANDBOX_BANK_LATENCY_MS", "PAYMENT_GATEWAY"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "DJANGO_DEBUG": "true",
            "DATABASE_URL": f"sqlite:///{database_path}",
            # One key for every server of this run: a session made on one server is valid on all.
            "DJANGO_SECRET_KEY": "bench-" + secrets.token_urlsafe(40),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def server_env(env: dict, *, redis_url: str = "", bank_ms: int = 0) -> dict:
    scenario = dict(env, SANDBOX_BANK_LATENCY_MS=str(bank_ms))
    if redis_url:
        scenario["REDIS_URL"] = redis_url
    return scenario


def product_ids(database_path: Path) -> list[int]:
    with sqlite3.connect(f"file:{database_path}?mode=ro", uri=True, timeout=20) as db:
        return [row[0] for row in db.execute("SELECT id FROM shop_product WHERE is_active ORDER BY id")]


def pending_orders(database_path: Path, user_ids: set[str]) -> int:
    with sqlite3.connect(f"file:{database_path}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT u.username FROM shop_order o JOIN auth_user u ON u.id = o.user_id WHERE o.status = 'pending'"
        ).fetchall()
    return sum(1 for (username,) in rows if username in user_ids)


def order_timeline(database_path: Path, usernames: set[str], since: float) -> list[tuple[float, float | None]]:
    """(reserved, paid) of each order of these users, in seconds after `since` (server clock = ours)."""
    query = """
        SELECT u.username, e.to_status, e.created_at FROM shop_orderevent e
        JOIN shop_order o ON o.id = e.order_id JOIN auth_user u ON u.id = o.user_id
        WHERE e.to_status IN ('pending', 'paid')
    """
    with sqlite3.connect(f"file:{database_path}?mode=ro", uri=True, timeout=20) as db:
        rows = db.execute(query).fetchall()
    moments: dict[str, dict[str, float]] = {}
    for username, status, created_at in rows:
        if username in usernames:
            stamp = datetime.fromisoformat(created_at).replace(tzinfo=timezone.utc).timestamp()
            moments.setdefault(username, {})[status] = stamp - since
    return [(m["pending"], m.get("paid")) for m in moments.values() if "pending" in m]


def thread_count(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def push_outcomes(log: str) -> tuple[int, int]:
    """Count pushes the server logged as timed out / failed (lines of the app's own formatter)."""
    lines = [line for line in log.splitlines() if " notifications.services: Push of " in line]
    return sum("timed out;" in line for line in lines), sum(" failed (" in line for line in lines)


def log_in_all(shoppers: list[Shopper], port: int) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda shopper: shopper.log_in(port), shoppers))


def prepare_checkout(shopper: Shopper, port: int, product_id: int) -> dict:
    shopper.add_to_cart(port, product_id)
    return shopper.open_checkout(port)


# Part 1: checkout response time per channel layer ----------------------------------------


def part_checkout_vs_layer(scenarios: list[dict], products: list[int], orders: int) -> dict:
    """Interleave orders across the scenarios' servers; time only the checkout POST."""
    times: dict[str, list[float]] = {s["key"]: [] for s in scenarios}
    errors: dict[str, list[str]] = {s["key"]: [] for s in scenarios}
    for scenario in scenarios:
        for index in range(WARMUP_ORDERS):
            fields = prepare_checkout(scenario["shopper"], scenario["server"].port, products[index % len(products)])
            scenario["shopper"].pay(scenario["server"].port, fields)
    deadline = time.monotonic() + SCENARIO_BUDGET_S * len(scenarios)
    rounds = 0
    while rounds < orders and time.monotonic() < deadline:
        rounds += 1
        # Rotate who goes first, so no scenario always follows the same neighbour.
        shift = rounds % len(scenarios)
        for scenario in scenarios[shift:] + scenarios[:shift]:
            port, shopper = scenario["server"].port, scenario["shopper"]
            try:
                fields = prepare_checkout(shopper, port, products[rounds % len(products)])
                done = shopper.pay(port, fields)
            except (ShopperError, OSError) as error:
                errors[scenario["key"]].append(str(error))
                continue
            times[scenario["key"]].append(done.seconds)
    return {"rounds": rounds, "times": times, "errors": errors}


# Part 2: commit-to-push latency ------------------------------------------------------------


async def _measure_pushes(server: DaphneServer, shopper: Shopper, products: list[int], orders: int) -> dict:
    arrivals: dict[str, tuple[float, dict]] = {}
    new_frame = asyncio.Event()
    result = {"commit_to_push": [], "response_to_push": [], "missing": 0, "errors": [], "hello": None}

    async with ws_client.connect(
        f"ws://127.0.0.1:{server.port}/ws/notifications/",
        origin=server.origin,
        additional_headers={"Cookie": shopper.cookie_header()},
        open_timeout=10,
        close_timeout=2,
        max_size=2**20,
    ) as socket:
        hello = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
        if hello.get("type") != "hello":
            raise ShopperError(f"the socket's first frame is {hello!r}, not hello")
        result["hello"] = hello

        async def read_frames():
            async for raw in socket:
                arrived = time.time()
                frame = json.loads(raw)
                if frame.get("type") == "notification":
                    arrivals[frame.get("url", "")] = (arrived, frame)
                    new_frame.set()

        reader = asyncio.create_task(read_frames())
        try:
            deadline = time.monotonic() + SCENARIO_BUDGET_S
            for index in range(orders):
                if time.monotonic() > deadline or reader.done():
                    break
                try:
                    fields = await asyncio.to_thread(
                        prepare_checkout, shopper, server.port, products[index % len(products)]
                    )
                    done = await asyncio.to_thread(shopper.pay, server.port, fields)
                except (ShopperError, OSError) as error:
                    result["errors"].append(str(error))
                    continue
                path = done.location_path
                wait_until = time.monotonic() + PUSH_WAIT_S
                while path not in arrivals and time.monotonic() < wait_until and not reader.done():
                    new_frame.clear()
                    try:
                        await asyncio.wait_for(new_frame.wait(), timeout=max(0.01, wait_until - time.monotonic()))
                    except TimeoutError:
                        break
                if path not in arrivals:
                    result["missing"] += 1
                    continue
                arrived, frame = arrivals[path]
                created = datetime.fromisoformat(frame["created_at"]).timestamp()
                result["commit_to_push"].append(arrived - created)
                result["response_to_push"].append(arrived - done.arrived_at)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return result


def part_push_latency(server: DaphneServer, shopper: Shopper, products: list[int], orders: int) -> dict:
    try:
        measured = asyncio.run(_measure_pushes(server, shopper, products, orders))
    except (ShopperError, OSError, TimeoutError, WebSocketException) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {
        "orders": len(measured["commit_to_push"]) + measured["missing"],
        "pushes_received": len(measured["commit_to_push"]),
        "missing": measured["missing"],
        "errors": measured["errors"],
        "hello": measured["hello"],
        "commit_to_push": summary_ms(measured["commit_to_push"]),
        "response_to_push": summary_ms(measured["response_to_push"]),
        # Negative: the push reached the socket before the checkout response reached the browser.
        "push_before_response": sum(1 for value in measured["response_to_push"] if value < 0),
    }


# Part 3: a slow bank holds no thread ------------------------------------------------------


def part_slow_bank(server: DaphneServer, shoppers: list[Shopper], products: list[int], database: Path) -> dict:
    port = server.port
    with ThreadPoolExecutor(max_workers=4) as pool:
        forms = list(
            pool.map(
                lambda item: prepare_checkout(item[1], port, products[item[0] % len(products)]), enumerate(shoppers)
            )
        )

    visitor = Shopper()

    def catalog_times(count: int) -> list[tuple[float, float]]:
        timings, deadline = [], time.monotonic() + SCENARIO_BUDGET_S
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            page = visitor.get(port, "/")
            if page.status != 200:
                raise ShopperError(f"GET / answered {page.status}")
            timings.append((page.seconds, page.finished))
        return timings

    catalog_times(3)  # warm-up
    idle_before = catalog_times(CATALOG_REQUESTS)
    threads_idle = thread_count(server.process.pid)
    threads_peak = [threads_idle or 0]
    sampling = threading.Event()

    def sample_threads() -> None:
        while not sampling.wait(0.01):
            threads_peak.append(thread_count(server.process.pid) or 0)

    start = threading.Barrier(len(shoppers) + 1, timeout=30)
    outcomes: list[tuple[float, str | None] | None] = [None] * len(shoppers)

    def pay(index: int) -> None:
        start.wait()
        try:
            done = shoppers[index].pay(port, forms[index])
            outcomes[index] = (done.finished, None)
        except (ShopperError, OSError) as error:
            outcomes[index] = (time.perf_counter(), str(error))

    threads = [threading.Thread(target=pay, args=(index,), daemon=True) for index in range(len(shoppers))]
    sampler = threading.Thread(target=sample_threads, daemon=True)
    for thread in threads:
        thread.start()
    start.wait()
    started, started_wall = time.perf_counter(), time.time()
    sampler.start()
    # Wait until every order is PENDING, i.e. reserved and now waiting on the bank (bounded).
    usernames = {shopper.username for shopper in shoppers}
    waiting = 0
    while time.perf_counter() - started < SLOW_BANK_MS / 1000 * 0.6:
        waiting = pending_orders(database, usernames)
        if waiting >= len(shoppers):
            break
        time.sleep(0.005)
    catalog_started = time.perf_counter()
    loaded = catalog_times(CATALOG_REQUESTS)
    for thread in threads:
        thread.join(timeout=max(1.0, SCENARIO_BUDGET_S - (time.perf_counter() - started)))
    sampling.set()
    sampler.join(timeout=2)
    idle_after = catalog_times(CATALOG_REQUESTS)
    visitor.close()
    timeline = order_timeline(database, usernames, started_wall)
    reserved = [moment for moment, _ in timeline]
    bank_waits = [paid - moment for moment, paid in timeline if paid is not None]

    finished = [outcome[0] for outcome in outcomes if outcome is not None]
    failures = [outcome[1] for outcome in outcomes if outcome is not None and outcome[1]]
    unfinished = sum(1 for outcome in outcomes if outcome is None)
    first_response = min(finished) if finished else float("inf")
    idle = summary_ms([seconds for seconds, _ in idle_before + idle_after])
    busy = summary_ms([seconds for seconds, _ in loaded])
    return {
        "bank_latency_ms": SLOW_BANK_MS,
        "checkouts": len(shoppers),
        "checkout_failures": failures,
        "checkouts_unfinished": unfinished,
        "checkouts_wall_s": round(max(finished) - started, 3) if finished else None,
        "checkout_response": summary_ms([end - started for end in finished]),
        # From the orders' own timeline (OrderEvent rows): when each was reserved (PENDING) after the
        # start, and how long it then stayed PENDING (the bank's answer plus waiting to write PAID).
        "reserved_after_start": summary_ms(reserved),
        "pending_to_paid": summary_ms(bank_waits),
        "daphne_threads_idle": threads_idle,
        "daphne_threads_peak": max(threads_peak),
        "orders_waiting_on_bank_when_catalog_started": waiting,
        "catalog_started_after_ms": round((catalog_started - started) * 1000, 1),
        "catalog_idle": idle,
        "catalog_idle_before": summary_ms([seconds for seconds, _ in idle_before]),
        "catalog_idle_after": summary_ms([seconds for seconds, _ in idle_after]),
        "catalog_during_checkouts": busy,
        "catalog_done_while_all_checkouts_in_flight": sum(1 for _, end in loaded if end < first_response),
        "catalog_ratio": ratio(busy, idle),
    }


# Reporting ----------------------------------------------------------------------------------


def fmt(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def verdict(passed: bool, text: str, verdicts: list) -> None:
    verdicts.append({"pass": passed, "text": text})
    print(f"{'PASS' if passed else 'FAIL'}: {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50, help="orders per scenario in parts 1 and 2 (default 50)")
    parser.add_argument("--skip-redis", action="store_true", help="skip every Redis-backed scenario")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 3 or 12 (default 123)")
    args = parser.parse_args()
    if not 1 <= args.orders <= 1000:
        parser.error("--orders must be between 1 and 1000")
    if not args.parts or set(args.parts) - set("123"):
        parser.error("--parts takes digits among 1, 2 and 3")

    run_started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    database = tmp / "bench.sqlite3"
    env = base_env(database)
    report: dict = {
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "orders_per_scenario": args.orders,
        "parts": args.parts,
        "notes": [],
    }
    verdicts: list[dict] = []

    redis_problem = "--skip-redis given" if args.skip_redis else redis_reachable(REDIS_PORT)
    if redis_problem:
        print(f"Skipping healthy-Redis scenarios: {redis_problem}.")
        report["notes"].append(f"healthy-Redis scenarios skipped: {redis_problem}")

    servers: list[DaphneServer] = []
    black_hole: BlackHoleServer | None = None
    shoppers = {n: Shopper(f"customer{n}", PASSWORD) for n in range(1, CUSTOMERS + 1)}
    # customer1-4: part 1 scenarios (a)-(d); customer5-6: part 2; customer7-36: part 3.
    part3_buyers = [shoppers[n] for n in range(7, 7 + CONCURRENT_CHECKOUTS)]

    def start(name: str, **kwargs) -> DaphneServer:
        server = DaphneServer(name=name, root=ROOT, daphne=DAPHNE, env=server_env(env, **kwargs), log_dir=tmp)
        servers.append(server)
        return server.start()

    def stop(server: DaphneServer) -> None:
        server.stop()
        servers.remove(server)

    try:
        print(f"Preparing a throw-away database in {tmp} ...", flush=True)
        run_manage(ROOT, PYTHON, env, "migrate", "--noinput")
        seed = ["--customers", str(CUSTOMERS), "--products", "5", "--stock", "100000", "--password", PASSWORD]
        run_manage(ROOT, PYTHON, env, "seed_demo", *seed)
        products = product_ids(database)

        scenarios = []
        if "1" in args.parts or "2" in args.parts:
            scenarios.append({"key": "a_memory", "label": "(a) in-memory layer", "kwargs": {}})
            if not redis_problem:
                flush_redis_db(REDIS_PORT, REDIS_DB)
                redis_url = f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
                scenarios.append({"key": "b_redis", "label": "(b) healthy Redis", "kwargs": {"redis_url": redis_url}})
        if "1" in args.parts and not args.skip_redis:
            # These two need no Redis server: one never answers, the other refuses.
            black_hole = BlackHoleServer().start()
            scenarios.append(
                {
                    "key": "c_blackhole",
                    "label": "(c) Redis never answers",
                    "kwargs": {"redis_url": f"redis://127.0.0.1:{black_hole.port}/0"},
                }
            )
            scenarios.append(
                {
                    "key": "d_refused",
                    "label": "(d) Redis refuses",
                    "kwargs": {"redis_url": f"redis://127.0.0.1:{free_port()}/0"},
                }
            )
        shopper_number = {"a_memory": 1, "b_redis": 2, "c_blackhole": 3, "d_refused": 4}
        for scenario in scenarios:
            scenario["server"] = start(scenario["key"], bank_ms=0, **scenario["kwargs"])
            scenario["shopper"] = shoppers[shopper_number[scenario["key"]]]
        slow = start("slow_bank", bank_ms=SLOW_BANK_MS) if "3" in args.parts else None

        to_log_in = [shoppers[n] for n in range(1, 7)] if scenarios else []
        to_log_in += part3_buyers if slow else []
        print(f"Logging in {len(to_log_in)} customers ...", flush=True)
        log_in_all(to_log_in, (scenarios[0]["server"] if scenarios else slow).port)

        if "1" in args.parts:
            phase = time.monotonic()
            print(f"Part 1: {args.orders} interleaved checkouts per scenario, bank latency 0 ms ...", flush=True)
            report["part1_checkout_vs_layer"] = run_part1(scenarios, products, args.orders)
            report["part1_checkout_vs_layer"]["seconds"] = round(time.monotonic() - phase, 1)
            if black_hole is not None:
                # Every hung push opened a connection; the ones the server gave up on should be closed.
                report["part1_checkout_vs_layer"]["scenarios"]["c_blackhole"].update(
                    {"black_hole_connections": len(black_hole.held), "black_hole_still_open": black_hole.still_open()}
                )
            for scenario in scenarios:
                if scenario["key"] in {"c_blackhole", "d_refused"}:
                    stop(scenario["server"])
            if black_hole is not None:
                black_hole.stop()
                black_hole = None

        if "2" in args.parts:
            print("Part 2: commit-to-push latency over a WebSocket ...", flush=True)
            phase = time.monotonic()
            report["part2_push_latency"] = {}
            push_runs = {"a_memory": ("memory", shoppers[5]), "b_redis": ("redis", shoppers[6])}
            for scenario in scenarios:
                if scenario["key"] in push_runs:
                    key, shopper = push_runs[scenario["key"]]
                    report["part2_push_latency"][key] = part_push_latency(
                        scenario["server"], shopper, products, args.orders
                    )
            report["part2_seconds"] = round(time.monotonic() - phase, 1)
        for scenario in scenarios:
            if scenario["server"] in servers:
                stop(scenario["server"])

        if slow is not None:
            print(
                f"Part 3: {CONCURRENT_CHECKOUTS} concurrent checkouts against a {SLOW_BANK_MS} ms bank ...", flush=True
            )
            phase = time.monotonic()
            report["part3_slow_bank"] = part_slow_bank(slow, part3_buyers, products, database)
            report["part3_slow_bank"]["seconds"] = round(time.monotonic() - phase, 1)
            stop(slow)
    except (ShopperError, RuntimeError) as error:
        print(f"FAIL: the benchmark could not run: {error}")
        for server in servers:
            print(f"   (server log: {server.log_path})")
        return 2
    finally:
        for server in servers:
            server.stop()
        if black_hole is not None:
            black_hole.stop()
        for shopper in shoppers.values():
            shopper.close()

    shutil.rmtree(tmp, ignore_errors=True)  # kept only when the run could not finish, for its logs
    report["run_seconds"] = round(time.monotonic() - run_started, 1)
    print_report(report, verdicts)
    report["verdicts"] = verdicts
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"Results written to {RESULTS / 'latest.json'}; run time {report['run_seconds']} s.")
    return 0 if all(item["pass"] for item in verdicts) else 1


def run_part1(scenarios: list[dict], products: list[int], orders: int) -> dict:
    part1 = part_checkout_vs_layer(scenarios, products, orders)
    stats = {key: summary_ms(values) for key, values in part1["times"].items()}
    orders_per_server = WARMUP_ORDERS + part1["rounds"]
    # Let the last hung pushes reach their timeout, so the server logs tell every outcome.
    settle_until = time.monotonic() + DISPATCH_TIMEOUT_S + 1.5
    while time.monotonic() < settle_until and any(
        push_outcomes(s["server"].log_text())[0] < orders_per_server for s in scenarios if s["key"] == "c_blackhole"
    ):
        time.sleep(0.1)
    for scenario in scenarios:
        timed_out, failed = push_outcomes(scenario["server"].log_text())
        row = stats[scenario["key"]]
        row.update(
            {
                "label": scenario["label"],
                "errors": part1["errors"][scenario["key"]][:5],
                "error_count": len(part1["errors"][scenario["key"]]),
                "orders_on_server": orders_per_server,
                "server_log_push_timed_out": timed_out,
                "server_log_push_failed": failed,
            }
        )
        if scenario["key"] != "a_memory":
            row["ratio_to_a"] = ratio(row, stats["a_memory"])
        if scenario["key"] in {"c_blackhole", "d_refused"} and "b_redis" in stats:
            row["ratio_to_b"] = ratio(row, stats["b_redis"])
    return {"rounds": part1["rounds"], "warmup_orders": WARMUP_ORDERS, "bank_latency_ms": 0, "scenarios": stats}


def print_report(report: dict, verdicts: list) -> None:
    machine = report["machine"]
    print(f"\n=== checkout_latency  {report['started_at']}  {machine['cpus']} cores  Python {machine['python']} ===")
    if "part1_checkout_vs_layer" in report:
        print_part1(report, verdicts)
    if "part2_push_latency" in report:
        print_part2(report, verdicts)
    if "part3_slow_bank" in report:
        print_part3(report, verdicts)
    print(f"\nOVERALL: {'PASS' if all(item['pass'] for item in verdicts) else 'FAIL'}")


def stats_cells(row: dict) -> str:
    return f"{row.get('n', 0):>4}{fmt(row.get('p50_ms')):>9}{fmt(row.get('p95_ms')):>9}{fmt(row.get('max_ms')):>9}"


def print_part1(report: dict, verdicts: list) -> None:
    part1 = report["part1_checkout_vs_layer"]
    print(f"\n1. Checkout POST response time by channel layer (bank 0 ms, {part1['rounds']} interleaved rounds)")
    print(
        f"   {'scenario':<26}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'/(a)':>7}{'/(b)':>7}  pushes timed out/failed/orders"
    )
    for row in part1["scenarios"].values():
        print(
            f"   {row['label']:<26}{stats_cells(row)}{fmt(row.get('ratio_to_a')):>7}{fmt(row.get('ratio_to_b')):>7}"
            f"  {row['server_log_push_timed_out']}/{row['server_log_push_failed']}/{row['orders_on_server']}"
        )
    for row in part1["scenarios"].values():
        if row["error_count"]:
            verdict(
                False, f"{row['label']}: {row['error_count']} checkout(s) failed, e.g. {row['errors'][0]}", verdicts
            )
        for name, base in (("ratio_to_a", "(a)"), ("ratio_to_b", "(b)")):
            if row.get(name) is not None:
                verdict(
                    row[name] <= RATIO_LIMIT_CHECKOUT,
                    f"checkout p50 {row['label']} / {base} = {row[name]} (limit {RATIO_LIMIT_CHECKOUT})",
                    verdicts,
                )
    if "black_hole_connections" in part1["scenarios"].get("c_blackhole", {}):
        row = part1["scenarios"]["c_blackhole"]
        print(
            f"   (c): the never-answering Redis got {row['black_hole_connections']} connections;"
            f" {row['black_hole_still_open']} were still open after the pushes timed out."
        )
    for key, expected in (("c_blackhole", "server_log_push_timed_out"), ("d_refused", "server_log_push_failed")):
        row = part1["scenarios"].get(key)
        if row is not None and not row[expected]:
            what = expected.split("push_")[1].replace("_", " ")
            report["notes"].append(f"{row['label']}: the server log shows no push {what}")
            print(f"   note: {row['label']}: the server log shows no push {what}; the scenario did not bite.")


def print_part2(report: dict, verdicts: list) -> None:
    print("\n2. Push latency to the buyer's WebSocket, ms (negative: the push beat the checkout response)")
    print(
        f"   {'layer':<8}{'pushes':>8}   {'created_at -> frame p50/p95/max':<34}{'response -> frame p50/p95/max':<32}push first"
    )
    for key, row in report["part2_push_latency"].items():
        if "error" in row:
            verdict(False, f"push latency ({key}): {row['error']}", verdicts)
            continue
        c, r = row["commit_to_push"], row["response_to_push"]
        commit = f"{fmt(c.get('p50_ms'))} / {fmt(c.get('p95_ms'))} / {fmt(c.get('max_ms'))}"
        response = f"{fmt(r.get('p50_ms'))} / {fmt(r.get('p95_ms'))} / {fmt(r.get('max_ms'))}"
        print(
            f"   {key:<8}{row['pushes_received']:>4}/{row['orders']:<3}   {commit:<34}{response:<32}{row['push_before_response']}/{row['pushes_received']}"
        )
    for key, row in report["part2_push_latency"].items():
        if "error" not in row:
            verdict(
                row["missing"] == 0 and not row["errors"] and row["orders"] > 0,
                f"push latency ({key}): {row['pushes_received']}/{row['orders']} pushes arrived within {PUSH_WAIT_S:.0f} s"
                + (f"; {len(row['errors'])} checkout error(s), e.g. {row['errors'][0]}" if row["errors"] else ""),
                verdicts,
            )


def print_part3(report: dict, verdicts: list) -> None:
    part3 = report["part3_slow_bank"]
    idle, busy = part3["catalog_idle"], part3["catalog_during_checkouts"]
    print(
        f"\n3. Slow bank ({part3['bank_latency_ms']} ms): {part3['checkouts']} concurrent checkouts, catalog GET / meanwhile"
    )
    print(f"   {'':<36}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    print(f"   {'catalog idle (before + after)':<36}{stats_cells(idle)}")
    print(f"   {'catalog while checkouts in flight':<36}{stats_cells(busy)}")
    print(f"   {'checkout responses (from the start)':<36}{stats_cells(part3['checkout_response'])}")
    print(f"   {'order reserved (from the start)':<36}{stats_cells(part3['reserved_after_start'])}")
    print(f"   {'order PENDING -> PAID':<36}{stats_cells(part3['pending_to_paid'])}")
    print(
        f"   catalog loop started at +{part3['catalog_started_after_ms']} ms with"
        f" {part3['orders_waiting_on_bank_when_catalog_started']} orders waiting on the bank;"
        f" {part3['catalog_done_while_all_checkouts_in_flight']}/{busy.get('n', 0)} pages done before the first checkout returned."
    )
    print(
        f"   daphne threads: {fmt(part3['daphne_threads_idle'])} idle, {fmt(part3['daphne_threads_peak'])} at peak;"
        f" wall time of the {part3['checkouts']} checkouts {fmt(part3['checkouts_wall_s'], ' s')}"
        f" (one at a time would be >= {part3['checkouts'] * part3['bank_latency_ms'] / 1000:.0f} s)."
    )
    verdict(
        part3["catalog_ratio"] is not None and part3["catalog_ratio"] < RATIO_LIMIT_CATALOG,
        f"catalog p50 while checkouts wait on the bank / idle = {fmt(part3['catalog_ratio'])} (limit < {RATIO_LIMIT_CATALOG})",
        verdicts,
    )
    slowest = busy.get("max_ms")
    verdict(
        slowest is not None and slowest < part3["bank_latency_ms"],
        f"slowest catalog page while checkouts wait on the bank: {fmt(slowest, ' ms')}"
        f" (limit < one bank call, {part3['bank_latency_ms']} ms: nothing blocked the event loop)",
        verdicts,
    )
    wall_limit = WALL_LIMIT_FRACTION * part3["checkouts"] * part3["bank_latency_ms"] / 1000
    verdict(
        not part3["checkout_failures"]
        and not part3["checkouts_unfinished"]
        and part3["checkouts_wall_s"] is not None
        and part3["checkouts_wall_s"] < wall_limit,
        f"{part3['checkouts']} concurrent checkouts took {fmt(part3['checkouts_wall_s'], ' s')} in all"
        f" (limit {wall_limit:.0f} s, a third of one-at-a-time)"
        + (
            f"; {len(part3['checkout_failures'])} failed, e.g. {part3['checkout_failures'][0]}"
            if part3["checkout_failures"]
            else ""
        )
        + (f"; {part3['checkouts_unfinished']} unfinished" if part3["checkouts_unfinished"] else ""),
        verdicts,
    )


if __name__ == "__main__":
    sys.exit(main())

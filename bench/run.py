"""The shop's benchmark: every promise measured at scale, on PostgreSQL and Redis, against real daphne processes.

    make bench                          # every scenario but the live signals' two (README "Performance")
    make bench QUICK=1                  # a reduced run, under 2 minutes
    make bench SCENARIO=push_latency    # one scenario (several: SCENARIO="burst contention")
    make bench-live                     # cart_fanout and escalation_timer, which run only when named
    python bench/run.py --help

Writes bench/results/latest.json (layout: README "Performance"), latest.md (a table per
scenario) and PNG plots beside them. Servers are daphne processes on free 127.0.0.1 ports
serving bench/bench_asgi.py (the app plus a commit-time probe); clients are processes of their
own (bench/clients.py: asyncio + websockets). Data lives in a PostgreSQL database made for the
run and dropped after it; the channel layer uses Redis under a prefix of the run's own. Every
loop is bounded in count and time, and every process started here stops with the run.

Exit code 0: the run finished (goals met or not, see the table); 2: it could not run.
"""

import argparse
import json
import math
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".venv"
if Path(sys.prefix).resolve() != VENV.resolve() and (VENV / "bin" / "python").exists() and __name__ == "__main__":
    # Started with a Python outside the project's virtualenv: use the virtualenv's.
    os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import clients  # noqa: E402
from bench_servers import (  # noqa: E402
    DaphneServer,
    PostgresDatabase,
    Worker,
    machine_description,
    open_files,
    postgres_problem,
    process_stats,
    raise_open_files_limit,
    redis_reachable,
    run_manage,
)

PYTHON = VENV / "bin" / "python"
DAPHNE = VENV / "bin" / "daphne"
RESULTS = BENCH / "results"
PASSWORD = "bench-pass-1"
SCENARIOS = [
    "notify_overhead",
    "slow_bank",
    "push_latency",
    "burst",
    "connections",
    "contention",
    "cart_fanout",
    "escalation_timer",
]
# What `make bench` runs when no scenario is named: every scenario but the live signals' two
# (cart_fanout, escalation_timer), which run only when named (make bench-live runs both).
ONLY_WHEN_NAMED = {"cart_fanout", "escalation_timer"}
DEFAULT_SCENARIOS = [name for name in SCENARIOS if name not in ONLY_WHEN_NAMED]

# Full run, and QUICK (make bench QUICK=1: the same scenarios, smaller, under 2 minutes).
PLANS = {
    "full": {
        # 150 rounds: the p50 of 40 moved by several percent from run to run, against a goal of 5 %.
        "overhead_rounds": 150,
        "overhead_sync_every": 5,
        "overhead_warmup": 3,
        "waves": [50, 100, 200],
        "push_steps": [1, 100, 1000, 10000],
        "push_orders": 100,
        "burst_users": 1000,
        "burst_per_user": 5,
        "connection_steps": [1000, 2500, 5000, 10000],
        "connection_orders": 30,
        "idle_window_s": 5.0,
        "contention_buyers": 200,
        "contention_units": 10,
        "catalog_idle": 200,
        "fanout_carts": 1000,
        "fanout_rounds": 3,
        "fanout_layers": ["memory", "redis"],
        "fanout_client_processes": 4,
        "escalation_rates": [50, 200],
        "escalation_seconds": 10.0,
        "escalation_delay_s": 3.0,
        "escalation_writers": 4,
        "escalation_workers": 1,
        "escalation_read_share": 0.1,
    },
    "quick": {
        "overhead_rounds": 5,
        "overhead_sync_every": 2,
        "overhead_warmup": 1,
        "waves": [20, 50],
        "push_steps": [1, 100, 400],
        "push_orders": 15,
        "burst_users": 100,
        "burst_per_user": 5,
        "connection_steps": [200, 400],
        "connection_orders": 5,
        "idle_window_s": 1.0,
        "contention_buyers": 40,
        "contention_units": 10,
        "catalog_idle": 40,
        "fanout_carts": 200,
        "fanout_rounds": 2,
        "fanout_layers": ["memory", "redis"],
        "fanout_client_processes": 2,
        "escalation_rates": [50],
        "escalation_seconds": 4.0,
        "escalation_delay_s": 2.0,
        "escalation_writers": 4,
        "escalation_workers": 1,
        "escalation_read_share": 0.1,
    },
}
# The smoke test's (tests/test_bench_smoke.py): QUICK, smaller still, to check the harness in seconds.
PLANS["smoke"] = {
    **PLANS["quick"],
    "overhead_rounds": 2,
    "waves": [10],
    "push_steps": [1, 20],
    "push_orders": 3,
    "burst_users": 20,
    "burst_per_user": 2,
    "connection_steps": [20],
    "connection_orders": 2,
    "idle_window_s": 0.5,
    "contention_buyers": 20,
    "contention_units": 5,
    "catalog_idle": 10,
    "fanout_carts": 20,
    "fanout_rounds": 1,
    "fanout_layers": ["redis"],
    "fanout_client_processes": 1,
    "escalation_rates": [20],
    "escalation_seconds": 1.0,
    "escalation_delay_s": 1.0,
}
SOCKETS_PER_CLIENT = 2500  # one client process holds at most this many sockets
HANDSHAKES_IN_FLIGHT = 32  # across all client processes (daphne's listen backlog is 50)
SLOW_BANK_MS = 1000
FANOUT_SIGNAL_TIMEOUT_S = 60.0  # a cart socket that has not heard "sold out" by then counts as missing


# Statistics -------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def distribution_ms(seconds: list[float], *, samples: int = 0) -> dict:
    """n, p50, p95, p99 and max in milliseconds (and up to `samples` values, for the plots)."""
    ms = [value * 1000 for value in seconds]
    summary = {"n": len(ms)}
    if ms:
        summary.update(
            {
                "p50_ms": round(statistics.median(ms), 2),
                "p95_ms": round(percentile(ms, 0.95), 2),
                "p99_ms": round(percentile(ms, 0.99), 2),
                "max_ms": round(max(ms), 2),
            }
        )
    if samples and ms:
        step = max(1, len(ms) // samples)
        summary["samples_ms"] = [round(value, 2) for value in ms[::step]]
    return summary


def ratio(numerator, denominator) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


# One run: its database, Redis prefix, servers and client processes -------------------------------------


class ClientProcess:
    """A client process (bench/clients.py) and the pipe to it."""

    context = multiprocessing.get_context("spawn")

    def __init__(self, kind: str, conf: dict, *extra):
        self.kind = kind
        self.connection, child = self.context.Pipe()
        self.process = self.context.Process(target=clients.main, args=(kind, conf, child, *extra), daemon=True)
        self.process.start()
        child.close()
        self.last_answer: dict = {}

    def send(self, **command) -> None:
        self.connection.send(command)

    def receive(self, wait: float) -> dict:
        if not self.connection.poll(wait):
            raise BenchError(f"the {self.kind} client did not answer within {wait:.0f} s")
        answer = self.connection.recv()
        if "fatal" in answer:
            raise BenchError(f"the {self.kind} client failed: {answer['fatal']}")
        self.last_answer = answer
        return answer

    def ask(self, wait: float, **command) -> dict:
        self.send(**command)
        return self.receive(wait)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


class BenchError(RuntimeError):
    pass


class Run:
    def __init__(self, args, plan: dict):
        self.args, self.plan = args, plan
        self.tmp = Path(tempfile.mkdtemp(prefix="shop-bench-"))
        self.database = PostgresDatabase(args.postgres)
        self.redis_url = args.redis
        # Pub/sub channels are server-wide (not per database number): a prefix of the run's own
        # keeps its pushes apart from the test suite's and other runs' on the same Redis.
        self.layer_prefix = f"bench{os.getpid()}x{secrets.token_hex(2)}"
        self.secret_key = "bench-" + secrets.token_urlsafe(40)
        self.servers: list[DaphneServer] = []
        self.workers: list[Worker] = []
        self.client_processes: list[ClientProcess] = []
        self.session_pool: list[tuple[str, str]] = []  # (username, session key) of idle socket users
        self.client_cpu: dict[str, float] = {}

    # Environment ------------------------------------------------------------------------------

    def base_env(self) -> dict:
        drop = {
            "REDIS_URL",
            "DATABASE_URL",
            "DJANGO_SECRET_KEY",
            "SANDBOX_BANK_LATENCY_MS",
            "PAYMENT_GATEWAY",
            "DATABASE_POOL",
        }
        env = {key: value for key, value in os.environ.items() if key not in drop and not key.startswith("BENCH_")}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "shop.settings",
                # Production settings, so the figures are production's (DEBUG would record every query).
                "DJANGO_DEBUG": "false",
                "DJANGO_STATIC_MANIFEST": "false",
                "DJANGO_SECURE_COOKIES": "false",
                "DJANGO_SERVE_STATIC": "false",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
                "DATABASE_URL": self.database.url,
                # One key for every process of the run: sessions made here are valid on every server.
                "DJANGO_SECRET_KEY": self.secret_key,
                "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
                "SANDBOX_BANK_LEDGER": str(self.tmp / "sandbox-bank.sqlite3"),
                "CHANNEL_LAYER_PREFIX": self.layer_prefix,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def server(
        self,
        name: str,
        *,
        layer: str = "redis",
        bank_ms: int = 0,
        mode: str = "on",
        app: str = "shop",
        pool: bool = True,
        tree: Path | None = None,
    ) -> DaphneServer:
        env = self.base_env()
        env.update(
            {
                "SANDBOX_BANK_LATENCY_MS": str(bank_ms),
                "DATABASE_POOL": "true" if pool else "false",
                "BENCH_NOTIFY_MODE": mode,
                "BENCH_APP": app,
                "BENCH_COMMIT_LOG": str(self.tmp / f"commits-{name}.log"),
            }
        )
        if layer == "redis":
            env["REDIS_URL"] = self.redis_url
        if tree is not None:
            # Another copy of the project (--compare): the same bench probes, that tree's code.
            shutil.copytree(
                BENCH, tree / "bench", dirs_exist_ok=True, ignore=shutil.ignore_patterns("results", "reference")
            )
        server = DaphneServer(name=name, root=tree or ROOT, daphne=DAPHNE, env=env, log_dir=self.tmp)
        self.servers.append(server)
        server.start(ready_timeout=60)
        server.commit_log = Path(env["BENCH_COMMIT_LOG"])
        return server

    def stop_server(self, server: DaphneServer) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def worker(self, *, name: str = "worker", args: tuple[str, ...] = (), **extra_env) -> Worker:
        worker = Worker(
            root=ROOT, python=PYTHON, env={**self.base_env(), **extra_env}, log_dir=self.tmp, name=name, args=args
        )
        self.workers.append(worker)
        return worker.start()

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        if worker in self.workers:
            self.workers.remove(worker)

    def client(self, kind: str, conf: dict, *extra) -> ClientProcess:
        process = ClientProcess(kind, conf, *extra)
        self.client_processes.append(process)
        return process

    def finish_client(self, process: ClientProcess, scenario: str) -> None:
        """Stop a client process, adding its CPU time to the scenario's client CPU."""
        answer = process.last_answer
        if answer:
            record = self.client_cpu.setdefault(scenario, {"processes": 0, "cpu_s": 0.0, "max_share": 0.0})
            record["processes"] += 1
            record["cpu_s"] = round(record["cpu_s"] + answer.get("cpu_s", 0), 3)
            share = answer.get("cpu_s", 0) / max(answer.get("wall_s", 1), 1e-6)
            record["max_share"] = round(max(record["max_share"], share), 3)
        process.stop()
        if process in self.client_processes:
            self.client_processes.remove(process)

    def stop_everything(self) -> None:
        for process in list(self.client_processes):
            process.stop()
        for server in list(self.servers):
            server.stop()
        for worker in self.workers:
            worker.stop()

    # Data (the bench process uses Django's ORM on the run's database) -----------------------------

    def setup_django(self) -> None:
        os.environ.update(
            {key: value for key, value in self.base_env().items() if key.startswith(("DJANGO_", "DATABASE_"))}
        )
        os.environ.pop("REDIS_URL", None)
        os.environ["DATABASE_POOL"] = "false"
        import django

        django.setup()

    def close_db(self) -> None:
        from django.db import connections

        connections.close_all()

    def password_hash(self) -> str:
        if not hasattr(self, "_password_hash"):
            from django.contrib.auth.hashers import make_password

            # One real hash for every bench user: any of them can log in through the form.
            self._password_hash = make_password(PASSWORD)
        return self._password_hash

    def make_users(self, prefix: str, count: int, *, staff: bool = False) -> list[tuple[str, str]]:
        """Create `count` users with a login session each; return [(username, session key)]."""
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
        from django.contrib.sessions.backends.db import SessionStore
        from django.contrib.sessions.models import Session
        from django.utils import timezone
        from django.utils.crypto import get_random_string

        User = get_user_model()
        names = [f"{prefix}{number:05d}" for number in range(count)]
        User.objects.bulk_create(
            [
                User(
                    username=name,
                    email=f"{name}@example.com",
                    password=self.password_hash(),
                    is_staff=staff,
                    is_superuser=staff,
                )
                for name in names
            ],
            batch_size=2000,
        )
        users = list(User.objects.filter(username__in=names).order_by("username"))
        store = SessionStore()
        expire = timezone.now() + timezone.timedelta(days=1)
        sessions = []
        for user in users:
            data = {
                SESSION_KEY: str(user.pk),
                BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                HASH_SESSION_KEY: user.get_session_auth_hash(),
            }
            sessions.append(
                Session(session_key=get_random_string(32), session_data=store.encode(data), expire_date=expire)
            )
        Session.objects.bulk_create(sessions, batch_size=2000)
        self.close_db()
        return [(user.username, session.session_key) for user, session in zip(users, sessions, strict=True)]

    def idle_sessions(self, count: int) -> list[tuple[str, str]]:
        """Users for idle sockets, made once per run and shared by the scenarios."""
        if len(self.session_pool) < count:
            self.session_pool += self.make_users(f"idle{len(self.session_pool):05d}x", count - len(self.session_pool))
        return self.session_pool[:count]

    def make_product(self, name: str, stock: int) -> int:
        from decimal import Decimal

        from shop.models import Product

        slug = f"bench-{name}-{secrets.token_hex(3)}"
        # A new row takes its stock as given; later changes go through stock movements only.
        product = Product.objects.create(name=f"Bench {name}", slug=slug, price=Decimal("9.50"), stock=stock)
        self.close_db()
        return product.pk


# Measurements shared by scenarios -------------------------------------------------------------------


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def read_commit_log(path: Path) -> dict[int, float]:
    commits = {}
    try:
        for line in path.read_text().splitlines():
            notification_id, _, moment = line.partition(" ")
            commits[int(notification_id)] = float(moment)
    except OSError:
        pass
    return commits


def push_latencies(server: DaphneServer, pushes: list) -> list[float]:
    """Seconds from each notification's commit (in the server) to its frame's arrival (in the client)."""
    commits = read_commit_log(server.commit_log)
    return [arrived - commits[notification_id] for notification_id, arrived, _ in pushes if notification_id in commits]


def sample_db_connections(run: Run, stop: threading.Event, peaks: list[int]) -> None:
    """Count the run database's connections (pg_stat_activity) every 10 ms until stopped; keep the peak."""
    import psycopg

    with psycopg.connect(run.database.url, autocommit=True) as connection:
        while not stop.is_set():
            (count,) = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [run.database.name],
            ).fetchone()
            peaks.append(count)
            time.sleep(0.01)


class SocketFleet:
    """Idle authenticated sockets on one server, held by as many client processes as they need."""

    def __init__(self, run: Run, server: DaphneServer, sessions: list[tuple[str, str]], scenario: str):
        self.run, self.server, self.scenario = run, server, scenario
        keys = [key for _, key in sessions]
        count = max(1, math.ceil(len(keys) / SOCKETS_PER_CLIENT))
        per_process = HANDSHAKES_IN_FLIGHT // count or 1
        self.slices = [keys[index::count] for index in range(count)]
        self.holders = [
            run.client("sockets", {"port": server.port, "session_keys": part, "concurrency": per_process})
            for part in self.slices
        ]
        self.connected = 0
        self.held = [0] * len(self.holders)

    def grow(self, total: int, wait: float = 600) -> dict:
        """Connect sockets until `total` are open; return the connect rate and failures."""
        # Each holder ends with its even share of `total` (never more than its own users).
        count = len(self.holders)
        targets = [min(len(self.slices[i]), total // count + (1 if i < total % count else 0)) for i in range(count)]
        for index, holder in enumerate(self.holders):
            holder.send(op="connect", count=max(0, targets[index] - self.held[index]))
        answers = [holder.receive(wait) for holder in self.holders]
        opened = sum(answer["opened"] for answer in answers)
        failed = sum(answer["failed"] for answer in answers)
        self.connected += opened
        for index, answer in enumerate(answers):
            self.held[index] = answer["held"]
        starts = [answer["first_start"] for answer in answers if answer["first_start"]]
        ends = [answer["last_done"] for answer in answers if answer["last_done"]]
        elapsed = (max(ends) - min(starts)) if starts and ends else None
        handshakes = [value for answer in answers for value in answer["handshake_s"]]
        return {
            "opened": opened,
            "failed": failed,
            "errors": sorted({error for answer in answers for error in answer["errors"]})[:5],
            "connect_s": round(elapsed, 3) if elapsed else None,
            "connects_per_s": round(opened / elapsed, 1) if elapsed and opened else None,
            "handshake": distribution_ms(handshakes),
        }

    def frames(self) -> list:
        """Every notification frame so far: (holder, socket index, arrival, id, seq)."""
        collected = []
        for number, holder in enumerate(self.holders):
            answer = holder.ask(60, op="frames")
            collected += [(number, *frame) for frame in answer["frames"]]
        return collected

    def resume(self) -> list:
        replays = []
        for number, holder in enumerate(self.holders):
            answer = holder.ask(120, op="resume", timeout=30)
            replays += [(number, index, ids) for index, ids in answer["replayed"]]
        return replays

    def close(self) -> None:
        for holder in self.holders:
            try:
                holder.ask(60, op="close")
            except BenchError:
                pass
            self.run.finish_client(holder, self.scenario)


def socket_ladder(
    run: Run, servers: list[DaphneServer], *, steps: list[int], orders: int, scenario: str, probe: bool = True
) -> list[tuple[list[dict], dict]]:
    """Grow the idle sockets step by step; at each step measure memory, idle CPU, connect rate and pushes.

    Several servers (a before/after pair) climb the ladder together: sockets are connected to
    one after the other, then their idle windows are measured at the same time and their orders
    go round-robin, so the machine's noise falls on each alike. One (rows, base) per server.
    """
    sessions = run.idle_sessions(max(steps))
    buyers = {}
    if probe:
        for server in servers:
            [(username, session_key)] = run.make_users(f"probe-{server.name}-", 1)
            product = run.make_product(f"probe-{server.name}", 1_000_000)
            buyer = run.client(
                "buyer", {"port": server.port, "session_key": session_key, "username": username, "product": product}
            )
            buyer.receive(60)
            buyer.ask(120, op="orders", count=5)  # warm-up: every code path of a push has run once
            buyers[server.name] = buyer
    time.sleep(1.0)
    bases = {server.name: process_stats(server.process.pid) for server in servers}
    fleets = {server.name: SocketFleet(run, server, sessions, scenario) for server in servers}
    rows: dict[str, list[dict]] = {server.name: [] for server in servers}
    try:
        for step in steps:
            connects = {server.name: fleets[server.name].grow(step) for server in servers}
            time.sleep(1.0)
            before = {server.name: process_stats(server.process.pid) for server in servers}
            time.sleep(run.plan["idle_window_s"])
            after = {server.name: process_stats(server.process.pid) for server in servers}
            pushes: dict[str, list] = {server.name: [] for server in servers}
            missing = dict.fromkeys(pushes, 0)
            errors: dict[str, list] = {server.name: [] for server in servers}
            for _ in range(orders if buyers else 0):
                for server in servers:
                    answer = buyers[server.name].ask(120, op="orders", count=1, budget_s=60)
                    pushes[server.name] += answer["pushes"]
                    missing[server.name] += answer["missing"]
                    errors[server.name] += answer["errors"]
            for server in servers:
                name, fleet, connect = server.name, fleets[server.name], connects[server.name]
                row = {
                    "sockets": fleet.connected,
                    "connects_per_s": connect["connects_per_s"],
                    "connect_failures": connect["failed"],
                    "connect_errors": connect["errors"],
                    "handshake": connect["handshake"],
                    "rss_kib": after[name]["rss_kib"],
                    "kb_per_socket": round(
                        (after[name]["rss_kib"] - bases[name]["rss_kib"]) * 1.024 / fleet.connected, 2
                    )
                    if fleet.connected
                    else None,
                    "idle_cpu_share": round(
                        (after[name]["cpu_s"] - before[name]["cpu_s"]) / run.plan["idle_window_s"], 3
                    ),
                    "server_threads": after[name]["threads"],
                    "server_open_files": open_files(server.process.pid),
                }
                if buyers:
                    row.update(distribution_ms(push_latencies(server, pushes[name]), samples=300))
                    row.update(
                        {
                            "orders": len(pushes[name]) + missing[name],
                            "pushes_missing": missing[name],
                            "order_errors": errors[name][:5],
                        }
                    )
                rows[name].append(row)
                shown = {
                    k: v
                    for k, v in row.items()
                    if k not in {"samples_ms", "handshake", "connect_errors", "order_errors"}
                }
                print(f"    {name}: {json.dumps(shown)}", flush=True)
            if all(connects[name]["failed"] and connects[name]["opened"] == 0 for name in connects):
                break
    finally:
        for fleet in fleets.values():
            fleet.close()
        for buyer in buyers.values():
            buyer.last_answer = buyer.ask(30, op="close")
            run.finish_client(buyer, scenario)
    return [(rows[server.name], {"rss_kib_before_sockets": bases[server.name]["rss_kib"]}) for server in servers]


# Scenarios --------------------------------------------------------------------------------------------


def scenario_notify_overhead(run: Run) -> dict:
    plan = run.plan
    modes = ["off", "on", "slow", "sync"]
    worker = run.worker(DJANGO_EMAIL_BACKEND="bench.slow_email.SlowEmailBackend")
    servers = {mode: run.server(f"overhead-{mode}", mode=mode) for mode in modes}
    users = run.make_users("overhead", len(modes))
    product = run.make_product("overhead", 1_000_000)
    conf = {
        "servers": [
            {
                "key": mode,
                "port": servers[mode].port,
                "username": users[index][0],
                "every": plan["overhead_sync_every"] if mode == "sync" else 1,
            }
            for index, mode in enumerate(modes)
        ],
        "password": PASSWORD,
        "product": product,
        "rounds": plan["overhead_rounds"],
        "warmup": plan["overhead_warmup"],
        "budget_s": 600,
    }
    client = run.client("interleaved", conf)
    answer = client.receive(900)
    run.finish_client(client, "notify_overhead")
    for server in servers.values():
        run.stop_server(server)
    worker.stop()
    results = {mode: distribution_ms(answer["times"][mode], samples=500) for mode in modes}
    for mode in modes:
        results[mode]["errors"] = answer["errors"][mode]
    off = results["off"].get("p50_ms")
    return {
        "parameters": {
            "rounds": answer["rounds"],
            "sync_every_nth_round": plan["overhead_sync_every"],
            "warmup_orders_per_server": plan["overhead_warmup"],
            "bank_latency_ms": 0,
            "slow_path_delay_s": 1.0,
            "layer": "redis",
            "database": "postgresql (pool)",
            "what": "checkout POST response time; four servers side by side, orders round-robin",
        },
        "units": {"p50_ms": "ms", "*_over_off_p50": "ratio of p50s"},
        "modes": results,
        "on_p50_over_off_p50": ratio(results["on"].get("p50_ms"), off),
        "slow_notify_p50_over_off_p50": ratio(results["slow"].get("p50_ms"), off),
        "sync_baseline_p50_over_off_p50": ratio(results["sync"].get("p50_ms"), off),
    }


def checkout_wave(run: Run, servers, shoppers: list[tuple[str, str, int]], *, scenario: str, during=None) -> dict:
    """All shoppers prepare their checkout, then pay at once; `during` runs while they pay.

    With several servers the shoppers are dealt round-robin among them (as a proxy would).
    """
    servers = servers if isinstance(servers, list) else [servers]
    go = ClientProcess.context.Event()
    parts = []
    for number, server in enumerate(servers):
        mine = shoppers[number :: len(servers)]
        split = 2 if len(mine) > 1 and len(servers) == 1 else 1
        parts += [(server, mine[index::split]) for index in range(split)]
    waves = [
        run.client("wave", {"port": server.port, "shoppers": part, "timeout": 120}, go)
        for server, part in parts
        if part
    ]
    ready = [wave.receive(300) for wave in waves]
    prepare_errors = sum(answer["prepare_error_count"] for answer in ready)
    context = during.start() if during else None
    cpu_before = sum(process_stats(server.process.pid)["cpu_s"] or 0 for server in servers)
    started = time.time()
    go.set()
    answers = [wave.receive(300) for wave in waves]
    cpu_after = sum(process_stats(server.process.pid)["cpu_s"] or 0 for server in servers)
    for wave in waves:
        run.finish_client(wave, scenario)
    measured = during.stop(context) if during else None
    results = [result for answer in answers for result in answer["results"]]
    finished = [result["finished"] for result in results if result.get("finished")]
    wall = max(finished) - started if finished else None
    return {
        "started": started,
        "results": results,
        "prepare_errors": prepare_errors,
        "wall_s": round(wall, 3) if wall else None,
        # Server CPU while the wave paid: per checkout, and as a share of the cores the servers had.
        "server_cpu_ms_per_checkout": round((cpu_after - cpu_before) * 1000 / len(shoppers), 2) if shoppers else None,
        "server_cpu_share": round((cpu_after - cpu_before) / wall, 2) if wall else None,
        "during": measured,
    }


class DuringWave:
    """Catalog pages read one after another and the database's connections counted while a wave pays."""

    def __init__(self, run: Run, catalog: ClientProcess):
        self.run, self.catalog = run, catalog

    def start(self):
        stop, peaks = threading.Event(), []
        sampler = threading.Thread(target=sample_db_connections, args=(self.run, stop, peaks), daemon=True)
        sampler.start()
        self.catalog.ask(30, op="read", until_stopped=True, max_s=120)
        return stop, peaks, sampler

    def stop(self, context):
        stop, peaks, sampler = context
        answer = self.catalog.ask(60, op="stop")
        stop.set()
        sampler.join(timeout=5)
        return {"catalog": answer, "db_connections_peak": max(peaks) if peaks else None}


def scenario_slow_bank(run: Run) -> dict:
    plan = run.plan
    server = run.server("slow-bank", bank_ms=SLOW_BANK_MS)
    largest = max(plan["waves"])
    users = run.make_users("wave", largest)
    product = run.make_product("slow-bank", 1_000_000)
    catalog = run.client("catalog", {"port": server.port})
    catalog.ask(60, op="read", max_count=10)  # warm-up
    idle = catalog.ask(120, op="read", max_count=plan["catalog_idle"])
    idle_catalog = distribution_ms([seconds for _, seconds in idle["timings"]], samples=300)
    # Warm-up: the first checkouts of a process load and compile what the others reuse.
    checkout_wave(run, server, [(name, key, product) for name, key in users[:5]], scenario="slow_bank")
    waves = []
    for size in plan["waves"]:
        wave = checkout_wave(
            run,
            server,
            [(name, key, product) for name, key in users[:size]],
            scenario="slow_bank",
            during=DuringWave(run, catalog),
        )
        results = wave["results"]
        errors = [result for result in results if not result.get("paid")]
        storm = distribution_ms([seconds for _, seconds in wave["during"]["catalog"]["timings"]], samples=300)
        row = {
            "concurrent_checkouts": size,
            "wall_s": wave["wall_s"],
            "wall_over_bank_latency": ratio(wave["wall_s"], SLOW_BANK_MS / 1000),
            "errors": len(errors) + wave["prepare_errors"],
            "error_examples": sorted({f"{r.get('status')} {r.get('location') or r.get('error', '')}" for r in errors})[
                :5
            ],
            "db_connections_peak": wave["during"]["db_connections_peak"],
            "server_cpu_ms_per_checkout": wave["server_cpu_ms_per_checkout"],
            "server_cpu_share": wave["server_cpu_share"],
            "checkout": distribution_ms(
                [r["finished"] - r["started"] for r in results if r.get("finished")], samples=300
            ),
            "catalog_during": storm,
            "catalog_p99_storm_over_idle": ratio(storm.get("p99_ms"), idle_catalog.get("p99_ms")),
        }
        waves.append(row)
        print(
            f"    wave of {size}: wall {row['wall_s']} s, errors {row['errors']}, db connections {row['db_connections_peak']}, catalog p99 ratio {row['catalog_p99_storm_over_idle']}",
            flush=True,
        )
    catalog.ask(30, op="close")
    run.finish_client(catalog, "slow_bank")
    # What more processes reach: the largest wave again, dealt over one daphne per core (no proxy).
    processes = [server] + [
        run.server(f"slow-bank-{number}", bank_ms=SLOW_BANK_MS) for number in range(1, max(2, machine_cpus()))
    ]
    checkout_wave(run, processes[1:], [(name, key, product) for name, key in users[:5]], scenario="slow_bank")
    spread = checkout_wave(
        run, processes, [(name, key, product) for name, key in users[:largest]], scenario="slow_bank"
    )
    for process in processes:
        run.stop_server(process)
    spread_errors = [result for result in spread["results"] if not result.get("paid")]
    several = {
        "daphne_processes": len(processes),
        "concurrent_checkouts": largest,
        "wall_s": spread["wall_s"],
        "wall_over_bank_latency": ratio(spread["wall_s"], SLOW_BANK_MS / 1000),
        "errors": len(spread_errors) + spread["prepare_errors"],
        "server_cpu_ms_per_checkout": spread["server_cpu_ms_per_checkout"],
        "server_cpu_share": spread["server_cpu_share"],
    }
    print(
        f"    wave of {largest} over {len(processes)} processes: wall {several['wall_s']} s, errors {several['errors']}",
        flush=True,
    )
    largest_wave = max(waves, key=lambda row: row["concurrent_checkouts"])
    return {
        "parameters": {
            "bank_latency_ms": SLOW_BANK_MS,
            "waves": plan["waves"],
            "daphne_processes": 1,
            "database": "postgresql, Django's pool (max 20 per process)",
            "postgresql_max_connections": run.database.max_connections(),
        },
        "units": {
            "wall_over_bank_latency": "ratio",
            "errors": "count",
            "db_connections_peak": "connections",
            "*_ms": "ms",
        },
        "catalog_idle": idle_catalog,
        "waves": waves,
        "several_processes": several,
        "catalog_p99_storm_over_idle": largest_wave["catalog_p99_storm_over_idle"],
    }


def scenario_push_latency(run: Run) -> dict:
    plan = run.plan
    runs = []
    for layer in ("memory", "redis"):
        trees = [run.args.compare, None] if run.args.compare else [None]
        print(f"  layer {layer}{' (with the compare tree, side by side)' if run.args.compare else ''}", flush=True)
        servers = [run.server(f"push-{layer}{'-compare' if tree else ''}", layer=layer, tree=tree) for tree in trees]
        ladders = socket_ladder(
            run, servers, steps=plan["push_steps"], orders=plan["push_orders"], scenario="push_latency"
        )
        for server in servers:
            run.stop_server(server)
        for tree, (rows, _) in zip(trees, ladders, strict=True):
            for row in rows:
                runs.append(
                    {
                        **({"tree": str(tree)} if tree else {}),
                        "layer": layer,
                        "sockets": row["sockets"],
                        "orders": row.get("orders"),
                        "pushes_missing": row.get("pushes_missing"),
                        **{key: row.get(key) for key in ("n", "p50_ms", "p95_ms", "p99_ms", "max_ms", "samples_ms")},
                    }
                )
    return {
        "parameters": {
            "steps_other_sockets": plan["push_steps"],
            "orders_per_step": plan["push_orders"],
            "what": "notification commit (time.time() in the server's on-commit) to the frame's arrival in the buyer's client process",
        },
        "units": {
            "p50_ms": "ms",
            "p95_ms": "ms",
            "p99_ms": "ms",
            "sockets": "other authenticated sockets on the process",
        },
        "runs": runs,
    }


def scenario_connections(run: Run) -> dict:
    plan = run.plan
    out = {
        "parameters": {
            "steps": plan["connection_steps"],
            "layer": "redis",
            "idle_window_s": plan["idle_window_s"],
            "orders_per_step": plan["connection_orders"],
            "handshakes_in_flight": HANDSHAKES_IN_FLIGHT,
            "open_files_limit": list(run.open_files_limit),
        },
        "units": {
            "kb_per_socket": "KB (1000 bytes) of server RSS per socket, over the RSS before the sockets",
            "connects_per_s": "sockets/s",
            "idle_cpu_share": "share of one core",
            "p50_ms": "ms",
            "p99_ms": "ms",
        },
    }
    variants = [("shop", None), ("bare", None)]
    if run.args.compare:
        variants.insert(0, ("shop", run.args.compare))
    print(
        f"  {', '.join(app + (' (compare tree)' if tree else '') for app, tree in variants)}, side by side", flush=True
    )
    servers = [run.server(f"conn-{app}{'-compare' if tree else ''}", app=app, tree=tree) for app, tree in variants]
    # The app's ladder (with pushes) and the bare consumer's (without) side by side.
    ladders = socket_ladder(
        run,
        [server for server, (app, _) in zip(servers, variants, strict=True) if app == "shop"],
        steps=plan["connection_steps"],
        orders=plan["connection_orders"],
        scenario="connections",
    )
    ladders += socket_ladder(
        run,
        [server for server, (app, _) in zip(servers, variants, strict=True) if app == "bare"],
        steps=plan["connection_steps"],
        orders=0,
        scenario="connections",
        probe=False,
    )
    for server in servers:
        run.stop_server(server)
    ordered = [variant for variant in variants if variant[0] == "shop"] + [v for v in variants if v[0] == "bare"]
    for (app, tree), (rows, base) in zip(ordered, ladders, strict=True):
        limit_hit = [row for row in rows if row["connect_failures"]]
        for row in rows:
            row.pop("samples_ms", None)
        key = "compare_steps" if tree else "steps" if app == "shop" else "bare_consumer_steps"
        out[key] = rows
        out[f"{key}_base"] = base
        if limit_hit:
            out.setdefault("limits_hit", []).append(
                {"app": app, "at_sockets": limit_hit[0]["sockets"], "errors": limit_hit[0]["connect_errors"]}
            )
    return out


def scenario_burst(run: Run) -> dict:
    from decimal import Decimal

    from django.utils.crypto import get_random_string

    from notifications.models import Notification
    from shop.models import Order

    plan = run.plan
    users = run.make_users("burst", plan["burst_users"])
    [(staff_name, staff_key)] = run.make_users("burststaff", 1, staff=True)
    from django.contrib.auth import get_user_model

    user_ids = dict(
        get_user_model().objects.filter(username__in=[name for name, _ in users]).values_list("username", "pk")
    )
    Order.objects.bulk_create(
        [
            Order(
                user_id=user_ids[name],
                status=Order.Status.PAID,
                total=Decimal("9.50"),
                checkout_token=get_random_string(40),
            )
            for name, _ in users
            for _ in range(plan["burst_per_user"])
        ],
        batch_size=2000,
    )
    run.close_db()
    server = run.server("burst")
    fleet = SocketFleet(run, server, users, "burst")
    try:
        connect = fleet.grow(len(users))
        import asyncio

        from shop_client import Shopper

        async def admin_action() -> tuple[int, float, float]:
            staff = Shopper(server.port, staff_name, session_key=staff_key, timeout=600)
            page = await staff.get("/admin/shop/order/?status__exact=paid&q=burst")
            if page.status != 200:
                raise BenchError(f"the admin's order list answered {page.status}")
            started = time.time()
            done = await staff.post(
                "/admin/shop/order/?status__exact=paid&q=burst",
                {
                    "action": "mark_shipped",
                    "select_across": "1",
                    "index": "0",
                    "_selected_action": "0",
                    "csrfmiddlewaretoken": staff.csrf(),
                },
            )
            finished = time.time()
            await staff.close()
            return done.status, started, finished

        status, action_started, action_finished = asyncio.run(admin_action())
        expected_total = len(users) * plan["burst_per_user"]
        # Wait for the pushes: until every one arrived, or 5 s without a new one (bounded: 5 min).
        deadline, last_count, last_change = time.time() + 300, -1, time.time()
        while time.time() < deadline:
            frames = fleet.frames()
            if len(frames) != last_count:
                last_count, last_change = len(frames), time.time()
            if len(frames) >= expected_total or time.time() - last_change > 5:
                break
            time.sleep(0.5)
        replays = fleet.resume()
    finally:
        fleet.close()
        run.stop_server(server)
    expected = set(
        Notification.objects.filter(
            recipient__username__in=[name for name, _ in users], kind="order_shipped"
        ).values_list("recipient__username", "pk")
    )
    run.close_db()
    # Which user each socket belongs to: the fleet's slices are the users' session keys in order.
    owner = {}
    for number, keys in enumerate(fleet.slices):
        for index, key in enumerate(keys):
            owner[(number, index)] = key
    user_of_key = {key: name for name, key in users}
    live = {}
    for number, index, arrived, notification_id, _seq in frames:
        pair = (user_of_key[owner[(number, index)]], notification_id)
        live.setdefault(pair, []).append(arrived)
    replayed = {
        (user_of_key[owner[(number, index)]], notification_id)
        for number, index, ids in replays
        for notification_id in ids
    }
    delivered_live = expected & set(live)
    duplicates = sum(len(times) - 1 for times in live.values())
    arrivals = sorted(min(times) for pair, times in live.items() if pair in expected)
    first = arrivals[0] if arrivals else None
    return {
        "parameters": {
            "users": len(users),
            "notifications": expected_total,
            "sockets": connect["opened"],
            "trigger": "Django admin action 'mark shipped' on every PAID order of these users, one POST (select across)",
            "layer": "redis",
        },
        "units": {"*_share": "share of the notifications", "*_s": "s", "duplicates": "count"},
        "admin_action_status": status,
        "admin_action_s": round(action_finished - action_started, 3),
        "notifications_written": len(expected),
        "delivered_live_share": round(len(delivered_live) / expected_total, 4),
        "delivered_after_resume_share": round(len(expected & (set(live) | replayed)) / expected_total, 4),
        "duplicates": duplicates,
        "first_delivery_after_action_start_s": round(first - action_started, 3) if first else None,
        "last_delivery_s": round(arrivals[-1] - first, 3) if arrivals else None,
        "last_delivery_after_action_end_s": round(arrivals[-1] - action_finished, 3) if arrivals else None,
        "delivery_times_s": [round(moment - first, 4) for moment in arrivals[:: max(1, len(arrivals) // 2000)]]
        if first
        else [],
    }


def scenario_contention(run: Run) -> dict:
    from django.db.models import Count, Sum

    from shop.models import OrderLine, Payment, Product

    plan = run.plan
    server = run.server("contention")
    users = run.make_users("rival", plan["contention_buyers"])
    product = run.make_product("contention", plan["contention_units"])
    wave = checkout_wave(run, server, [(name, key, product) for name, key in users], scenario="contention")
    run.stop_server(server)
    results = wave["results"]
    lines = OrderLine.objects.filter(product_id=product)
    orders = lines.filter(order__status__in=["paid", "shipped", "delivered"]).values("order").distinct().count()
    sold = lines.exclude(order__status__in=["cancelled", "refunded"]).aggregate(units=Sum("quantity"))["units"] or 0
    stock = Product.objects.get(pk=product).stock
    order_ids = list(lines.values_list("order_id", flat=True))
    charged = (
        Payment.objects.filter(order_id__in=order_ids, status="captured")
        .values("order_id")
        .annotate(count=Count("pk"))
        .filter(count__gt=1)
        .count()
    )
    run.close_db()
    server_errors = sum(1 for r in results if (r.get("status") or 0) >= 500)
    no_answer = sum(1 for r in results if r.get("status") is None)
    paid_answers = sum(1 for r in results if r.get("paid"))
    return {
        "parameters": {
            "buyers": len(users),
            "units_in_stock": plan["contention_units"],
            "bank_latency_ms": 0,
            "database": "postgresql (pool)",
        },
        "units": {
            "orders": "count",
            "oversell": "units",
            "double_charges": "orders",
            "server_errors_5xx": "count",
            "orders_per_s": "orders/s",
        },
        "orders": orders,
        "paid_answers": paid_answers,
        "refusals": len(results) - paid_answers - server_errors - no_answer,
        "oversell": max(0, sold - plan["contention_units"]),
        "stock_left": stock,
        "double_charges": charged,
        "server_errors_5xx": server_errors,
        "no_answer": no_answer,
        "answers": sorted(
            {f"{r.get('status')} {r.get('location') or r.get('error') or r.get('problem', '')}" for r in results}
        )[:8],
        "wall_s": wave["wall_s"],
        "orders_per_s": round(orders / wave["wall_s"], 1) if wave["wall_s"] else None,
        "checkout": distribution_ms([r["finished"] - r["started"] for r in results if r.get("finished")], samples=300),
    }


def make_cart_sessions(run: Run, product: int, count: int) -> list[str]:
    """`count` anonymous carts holding 1 unit of `product`, each with a session of its own; return the session keys."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from shop.models import Cart, CartLine
    from shop.receivers import SESSION_CART_KEY

    carts = Cart.objects.bulk_create([Cart() for _ in range(count)], batch_size=2000)
    CartLine.objects.bulk_create(
        [CartLine(cart=cart, product_id=product, quantity=1) for cart in carts], batch_size=2000
    )
    store = SessionStore()
    expire = timezone.now() + timezone.timedelta(days=1)
    sessions = [
        Session(
            session_key=get_random_string(32),
            session_data=store.encode({SESSION_CART_KEY: cart.pk}),
            expire_date=expire,
        )
        for cart in carts
    ]
    Session.objects.bulk_create(sessions, batch_size=2000)
    run.close_db()
    return [session.session_key for session in sessions]


def restock_one(product: int) -> None:
    """Put one unit back (its fan-out runs in this process, on its in-memory layer: no socket hears it)."""
    import logging

    from shop import services
    from shop.models import Product

    logger = logging.getLogger("notifications.live")
    level = logger.level
    logger.setLevel(logging.WARNING)  # Its "Stock change: N cart(s) told" line is not the server's.
    try:
        services.receive_stock(product=Product.objects.get(pk=product), quantity=1, note="bench: next round")
    finally:
        logger.setLevel(level)


def server_fan_outs(server: DaphneServer, seen: int, *, wait_s: float = 2.0) -> tuple[list[dict], int]:
    """The server's "Stock change: N cart(s) told in X ms (query Y ms, Z failed)" lines after the first `seen`."""
    import re

    pattern = re.compile(r"Stock change: (\d+) cart\(s\) told in (\d+) ms \(query (\d+) ms, (\d+) failed\)")
    deadline = time.monotonic() + wait_s
    while True:
        found = pattern.findall(server.log_text())
        if len(found) > seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    rows = [
        {"carts_told": int(told), "fan_out_ms": int(ms), "query_ms": int(query), "failed": int(failed)}
        for told, ms, query, failed in found[seen:]
    ]
    return rows, len(found)


def fanout_round(run: Run, server: DaphneServer, holders: list[ClientProcess], buyer: tuple, seen: int):
    """The buyer pays for the last unit; every cart socket notes when it hears "sold out"."""
    go = ClientProcess.context.Event()
    wave = run.client("wave", {"port": server.port, "shoppers": [buyer], "timeout": 120}, go)
    ready = wave.receive(300)
    if ready["prepare_error_count"]:
        raise BenchError(f"the buyer could not open the checkout: {ready['prepare_errors']}")
    for holder in holders:
        holder.ask(30, op="arm")
    cpu_before = process_stats(server.process.pid)["cpu_s"] or 0
    go.set()
    [result] = wave.receive(300)["results"]
    run.finish_client(wave, "cart_fanout")
    answers = [
        holder.ask(FANOUT_SIGNAL_TIMEOUT_S + 30, op="heard", timeout=FANOUT_SIGNAL_TIMEOUT_S) for holder in holders
    ]
    cpu_after = process_stats(server.process.pid)["cpu_s"] or 0
    if not result.get("paid"):
        raise BenchError(
            f"the buyer's checkout answered {result.get('status')} "
            f"{result.get('location') or result.get('error') or result.get('problem')}"
        )
    sent = result["started"]
    latencies = sorted((moment - sent) * 1000 for answer in answers for moment in answer["heard"])
    expected = sum(answer["expected"] for answer in answers)
    fan_outs, seen = server_fan_outs(server, seen)

    def ms(value):
        return round(value, 1) if value is not None else None

    return {
        "carts": expected,
        "signals": len(latencies),
        "missing": expected - len(latencies),
        "checkout_post_ms": ms((result["finished"] - sent) * 1000),
        "first_ms": ms(latencies[0] if latencies else None),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p90_ms": ms(percentile(latencies, 0.90)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "last_ms": ms(latencies[-1] if latencies else None),
        "server_fan_out_ms": fan_outs[-1]["fan_out_ms"] if fan_outs else None,
        "server_query_ms": fan_outs[-1]["query_ms"] if fan_outs else None,
        "server_sends_failed": fan_outs[-1]["failed"] if fan_outs else None,
        "server_cpu_ms": round((cpu_after - cpu_before) * 1000),
    }, seen


def scenario_cart_fanout(run: Run) -> dict:
    plan = run.plan
    product = run.make_product("fanout", 1)
    keys = make_cart_sessions(run, product, plan["fanout_carts"])
    [(buyer_name, buyer_key)] = run.make_users("fanoutbuyer", 1)
    buyer = (buyer_name, buyer_key, product)
    processes = max(1, min(plan["fanout_client_processes"], len(keys)))
    rounds, connects = [], {}
    for layer in plan["fanout_layers"]:
        server = run.server(f"fanout-{layer}", layer=layer)
        holders = []
        try:
            holders = [
                run.client(
                    "carts",
                    {
                        "port": server.port,
                        "session_keys": keys[number::processes],
                        "concurrency": max(1, HANDSHAKES_IN_FLIGHT // processes),
                    },
                )
                for number in range(processes)
            ]
            ready = [holder.receive(600) for holder in holders]
            connects[layer] = {
                "opened": sum(answer["opened"] for answer in ready),
                "failed": sum(answer["failed"] for answer in ready),
                "errors": sorted({error for answer in ready for error in answer["errors"]})[:5],
                "connect_s": max(answer["connect_s"] for answer in ready),
            }
            print(f"  layer {layer}: {json.dumps(connects[layer])}", flush=True)
            seen = 0
            for number in range(1, plan["fanout_rounds"] + 1):
                row, seen = fanout_round(run, server, holders, buyer, seen)
                rounds.append({"layer": layer, "round": number, **row})
                print(f"    {json.dumps(rounds[-1])}", flush=True)
                restock_one(product)
                run.close_db()
        finally:
            for holder in holders:
                try:
                    holder.ask(60, op="close")
                except BenchError:
                    pass
                run.finish_client(holder, "cart_fanout")
            run.stop_server(server)
    layers = {}
    for layer in plan["fanout_layers"]:
        rows = [row for row in rounds if row["layer"] == layer]
        lasts = [row["last_ms"] for row in rows if row["last_ms"] is not None]
        layers[layer] = {
            "rounds": len(rows),
            "last_ms_median": round(statistics.median(lasts), 1) if lasts else None,
            "last_ms_max": max(lasts) if lasts else None,
            "p50_ms_median": round(statistics.median(row["p50_ms"] for row in rows if row["p50_ms"] is not None), 1)
            if lasts
            else None,
            "checkout_post_ms_median": round(statistics.median(row["checkout_post_ms"] for row in rows), 1)
            if rows
            else None,
            "missing": sum(row["missing"] for row in rows),
        }
    return {
        "parameters": {
            "carts": plan["fanout_carts"],
            "rounds_per_layer": plan["fanout_rounds"],
            "layers": plan["fanout_layers"],
            "client_processes": processes,
            "signal_timeout_s": FANOUT_SIGNAL_TIMEOUT_S,
            "database": "postgresql (pool)",
            "what": "one checkout buys the last unit of a product N anonymous carts hold (a /ws/cart/ socket "
            "each, one daphne); time from the checkout POST being sent to each socket hearing 'sold out'",
        },
        "units": {
            "*_ms": "ms after the checkout POST was sent (client clock = server clock)",
            "missing": "carts that never heard within the timeout",
            "server_*_ms": "the server's own log line for the fan-out (query, then the group sends)",
            "server_cpu_ms": "daphne CPU from the POST to the last signal",
        },
        "connects": connects,
        "rounds": rounds,
        "layers": layers,
        "signals_missing": sum(row["missing"] for row in rounds),
    }


def drain_due_tasks(timeout: float) -> int:
    """Wait until the task queue holds nothing already due (earlier scenarios' emails); return how many were."""
    from django_tasks_db.models import DBTaskResult

    due = DBTaskResult.objects.ready().count()
    deadline = time.monotonic() + timeout
    while DBTaskResult.objects.ready().exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return due


def escalation_load(run: Run, *, rate: float, user_ids: list[int], env: dict) -> dict:
    """Notifications at `rate` a second for the plan's seconds; how late each unread one's email went out."""
    from collections import Counter
    from datetime import timedelta

    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    from notifications import escalation
    from notifications.models import Notification

    plan = run.plan
    seconds, delay = plan["escalation_seconds"], plan["escalation_delay_s"]
    count = max(1, round(rate * seconds))
    started = timezone.now()
    notifier = run.client(
        "notifier",
        {
            "env": env,
            "user_ids": user_ids,
            "count": count,
            "seconds": seconds,
            "writers": plan["escalation_writers"],
            "read_share": plan["escalation_read_share"],
        },
    )
    answer = notifier.receive(seconds + 300)
    run.finish_client(notifier, "escalation_timer")
    written, read = answer["written"], answer["read"]
    tasks = DBTaskResult.objects.filter(task_path=escalation.send_unread_email.module_path, enqueued_at__gte=started)
    deadline = time.monotonic() + delay + 180
    while tasks.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    finished = not tasks.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists()
    due_after = timedelta(seconds=delay)
    lateness = [
        (emailed_at - (created_at + due_after)).total_seconds() * 1000
        for created_at, emailed_at in Notification.objects.filter(pk__in=written, emailed_at__isnull=False).values_list(
            "created_at", "emailed_at"
        )
    ]
    sends = Counter(
        arguments["kwargs"]["notification_id"]
        for arguments, value in tasks.filter(status="SUCCESSFUL").values_list("args_kwargs", "return_value")
        if (value or {}).get("sent")
    )
    unread_not_emailed = Notification.objects.filter(
        pk__in=written, read_at__isnull=True, emailed_at__isnull=True
    ).count()
    read_emailed = Notification.objects.filter(pk__in=read, emailed_at__isnull=False).count()
    run.close_db()

    def ms(fraction):
        value = percentile(lateness, fraction)
        return round(value, 1) if value is not None else None

    return {
        "rate_per_s": rate,
        "notifications": len(written),
        "write_errors": answer["error_count"],
        "written_s": answer["written_s"],
        # Below rate_per_s when the writers could not keep up (each notify() is its own transaction).
        "achieved_rate_per_s": round(len(written) / answer["written_s"], 1) if answer["written_s"] else None,
        "read_at_once": len(read),
        "emails": len(lateness),
        "late_ms": {
            "min": round(min(lateness), 1) if lateness else None,
            "p50": ms(0.50),
            "p90": ms(0.90),
            "p99": ms(0.99),
            "max": round(max(lateness), 1) if lateness else None,
        },
        "checks": {
            "all_tasks_finished": finished,
            "no_email_before_due": bool(lateness) and min(lateness) >= 0,
            "every_unread_emailed": unread_not_emailed == 0,
            "no_read_one_emailed": read_emailed == 0,
            "none_sent_twice": not any(times > 1 for times in sends.values()),
        },
    }


def scenario_escalation_timer(run: Run) -> dict:
    from django.contrib.auth import get_user_model

    plan = run.plan
    delay = plan["escalation_delay_s"]
    extra = {
        # notify() computes the due time where it runs (the notifier client), the worker runs it then.
        "NOTIFICATIONS_EMAIL_AFTER_MINUTES": str(delay / 60),
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
    }
    names = [name for name, _ in run.make_users("reader", 50)]
    user_ids = list(get_user_model().objects.filter(username__in=names).values_list("pk", flat=True))
    run.close_db()
    env = {
        **{key: value for key, value in run.base_env().items() if key.startswith(("DJANGO_", "DATABASE_"))},
        "DATABASE_POOL": "false",
        **extra,
    }
    workers = [
        run.worker(name=f"escalation-worker-{number}", args=("--no-startup-delay",), **extra)
        for number in range(plan["escalation_workers"])
    ]
    try:
        backlog = drain_due_tasks(timeout=120)
        run.close_db()
        loads = []
        for rate in plan["escalation_rates"]:
            loads.append(escalation_load(run, rate=rate, user_ids=user_ids, env=env))
            shown = {key: value for key, value in loads[-1].items() if key != "checks"}
            print(f"    {json.dumps(shown)}; checks {'held' if all(loads[-1]['checks'].values()) else 'FAILED'}")
    finally:
        for worker in workers:
            run.stop_worker(worker)
    return {
        "parameters": {
            "rates_per_s": plan["escalation_rates"],
            "seconds_per_rate": plan["escalation_seconds"],
            "email_due_after_s": delay,
            "writer_threads": plan["escalation_writers"],
            "workers": plan["escalation_workers"],
            "worker_polling_s": 1,
            "read_share": plan["escalation_read_share"],
            "database": "postgresql",
            "what": "notifications written through notify() at an even rate (a client process); the unread "
            "email's claim (emailed_at) after its due time (created_at + delay), with db_worker under that load",
        },
        "units": {"late_ms": "ms after due", "rate_per_s": "notifications/s", "emails": "count"},
        "backlog_tasks_due_at_start": backlog,
        "loads": loads,
        "all_checks_held": all(all(load["checks"].values()) for load in loads),
    }


RUNNERS = {
    "notify_overhead": scenario_notify_overhead,
    "slow_bank": scenario_slow_bank,
    "push_latency": scenario_push_latency,
    "burst": scenario_burst,
    "connections": scenario_connections,
    "contention": scenario_contention,
    "cart_fanout": scenario_cart_fanout,
    "escalation_timer": scenario_escalation_timer,
}


# Main -----------------------------------------------------------------------------------------------


def service_versions(run: Run) -> dict:
    import psycopg

    with psycopg.connect(run.database.url) as connection:
        postgres = connection.execute("SHOW server_version").fetchone()[0]
    import redis

    client = redis.Redis.from_url(run.redis_url, socket_timeout=5)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return {
        "postgresql": postgres,
        "postgresql_max_connections": run.database.max_connections(),
        "redis": redis_version,
    }


def plan_value(text: str, *, like):
    """Parse an overriding plan value: JSON (3, 0.5, ["redis"]), else numbers or words separated by commas."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [json.loads(part) if part.strip()[:1].isdigit() else part.strip() for part in text.split(",")]
    if isinstance(like, list) and not isinstance(value, list):
        value = [value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); without it every scenario but cart_fanout and escalation_timer",
    )
    parser.add_argument("--quick", action="store_true", help="the reduced run (under 2 minutes)")
    parser.add_argument(
        "--smoke", action="store_true", help="smaller than --quick: the test suite's check of the harness"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json, latest.md and the plots go")
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another copy of the project (e.g. the code before a change): push_latency, connections and burst "
        "also run on it, in the same run, for before/after ratios",
    )
    parser.add_argument("--push-steps", help="override push_latency's socket steps, e.g. 1,1000,10000")
    parser.add_argument("--connection-steps", help="override connections' socket steps, e.g. 1000,10000")
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one figure of the plan (repeatable; a JSON value, or numbers separated by commas), e.g. "
        f"fanout_carts=500 or escalation_rates=50,100; keys: {', '.join(PLANS['full'])}",
    )
    args = parser.parse_args()
    chosen = [name for name in SCENARIOS if name in (args.scenario or DEFAULT_SCENARIOS)]
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    args.quick = args.quick or args.smoke
    for option, key in ((args.push_steps, "push_steps"), (args.connection_steps, "connection_steps")):
        if option:
            plan = {**plan, key: [int(step) for step in option.split(",")]}
    for override in args.plan:
        key, _, value = override.partition("=")
        if key not in plan:
            parser.error(f"--plan {override}: no such key (keys: {', '.join(plan)})")
        plan = {**plan, key: plan_value(value, like=plan[key])}

    problems = [
        p for p in (postgres_problem(args.postgres), redis_reachable(int(args.redis.split(":")[2].split("/")[0]))) if p
    ]
    if problems:
        print("The benchmark cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2

    run = Run(args, plan)
    run.open_files_limit = raise_open_files_limit()
    started = time.monotonic()
    report = {
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_description(),
        "open_files_limit": {"soft": run.open_files_limit[0], "hard": run.open_files_limit[1]},
        "scenarios": {},
    }
    print(
        f"Bench run in {run.tmp}: database {run.database.name}, Redis {args.redis} prefix {run.layer_prefix}",
        flush=True,
    )
    exit_code = 0
    try:
        run.database.create()
        env = run.base_env()
        print("Migrating the bench database ...", flush=True)
        run_manage(ROOT, PYTHON, env, "migrate", "--noinput", timeout=300)
        run.setup_django()
        report["services"] = service_versions(run)
        for name in chosen:
            print(f"Scenario {name} ...", flush=True)
            phase = time.monotonic()
            try:
                result = RUNNERS[name](run)
            except Exception as error:
                traceback.print_exc()
                result = {"error": f"{type(error).__name__}: {error}"}
                exit_code = 2
                for server in list(run.servers):
                    print(f"   server log: {server.log_path}")
            result["seconds"] = round(time.monotonic() - phase, 1)
            result["client_cpu"] = run.client_cpu.get(name)
            report["scenarios"][name] = result
    finally:
        run.stop_everything()
        try:
            run.close_db()
        except Exception:
            pass
        try:
            run.database.drop()
        except Exception as error:
            print(f"Could not drop {run.database.name}: {error}", file=sys.stderr)
    report["run_seconds"] = round(time.monotonic() - started, 1)
    import report as reporting

    report["goals"] = reporting.goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "latest.md").write_text(reporting.markdown(report))
    if not args.no_plots:
        reporting.plots(report, args.out)
    print(reporting.markdown(report))
    print(f"Results in {args.out}; run time {report['run_seconds']} s.")
    if exit_code == 0:
        shutil.rmtree(run.tmp, ignore_errors=True)  # kept when a scenario failed, for its logs
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

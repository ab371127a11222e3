"""What the live-signal benchmarks (cart_fanout.py, escalation_timer.py) share: a throw-away
database for Django in this process, and child processes (daphne, the task worker, clients)
that die with the benchmark.

Nothing here touches the project's db.sqlite3 or a shared Redis database's data: the database
is a temporary SQLite file, or a PostgreSQL database created for the run and dropped after it.
"""

import contextlib
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
DAPHNE = ROOT / ".venv" / "bin" / "daphne"
RESULTS = ROOT / "bench" / "results"

# `python -c <this> <bench pid> <program> <args...>`: SIGTERM the child when the bench dies
# (PR_SET_PDEATHSIG survives exec), then become <program>.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the benchmark ended before this process started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def reexec_in_venv() -> None:
    """Started with a Python outside the project's virtualenv: run again with the virtualenv's."""
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        if not os.environ.get("BENCH_REEXEC"):
            os.environ["BENCH_REEXEC"] = "1"
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])


def dying_with_bench(command: list[str]) -> list[str]:
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_open_files_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


class ThrowawayDatabase:
    """A temporary SQLite file, or (with a PostgreSQL server URL) a database created for this run."""

    def __init__(self, postgres_server: str | None):
        self.dir = Path(tempfile.mkdtemp(prefix="shop-bench-live-"))
        self.postgres_server = postgres_server
        self.name = f"shop_bench_live_{os.getpid()}"
        if postgres_server:
            parts = urlsplit(postgres_server)
            self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        else:
            self.url = f"sqlite:///{self.dir / 'bench.sqlite3'}"

    def _admin(self):
        import psycopg

        parts = urlsplit(self.postgres_server)
        return psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True)

    def create(self) -> "ThrowawayDatabase":
        if self.postgres_server:
            with self._admin() as connection:
                connection.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        if self.postgres_server:
            with contextlib.suppress(Exception), self._admin() as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_environment(database: ThrowawayDatabase, *, redis_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of this process's Django and of every child: one database, one secret key."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        DATABASE_URL=database.url,
        DJANGO_SECRET_KEY=os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        DJANGO_DEBUG="true",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        SANDBOX_BANK_LATENCY_MS="0",
        SANDBOX_BANK_LEDGER=str(database.dir / "bank.sqlite3"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env.pop("DJANGO_CSRF_TRUSTED_ORIGINS", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    os.environ.update(env)
    if not redis_url:
        os.environ.pop("REDIS_URL", None)
    return env


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


class Child:
    """A child process with its own log file, stopped (TERM, then KILL) by stop()."""

    def __init__(self, name: str, command: list[str], *, env: dict, log_dir: Path):
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Child":
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            dying_with_bench(self.command),
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        with contextlib.suppress(Exception):
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_daphne(env: dict, log_dir: Path, *, timeout: float = 30.0) -> tuple[Child, int]:
    port = free_port()
    server = Child(
        "daphne", [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), "shop.asgi:application"], env=env, log_dir=log_dir
    ).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"daphne exited ({server.process.returncode}):\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return server, port
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"daphne did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (sorted or not); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]

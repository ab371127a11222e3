"""Run the production topology on 127.0.0.1: nginx in front of N daphne processes, and one task worker.

    python deploy/prod_local.py start [--daphnes 3]   # make prod-local
    python deploy/prod_local.py stop                  # make prod-local-stop
    python deploy/prod_local.py status

`start` uses the running PostgreSQL and Redis (127.0.0.1:5432 as `postgres`, 127.0.0.1:6379)
with a database of its own (`shop_prod_local`: created if missing, migrated, seeded with
seed_demo) and a Redis database number of its own (9), runs collectstatic, starts every
process on a free port with DEBUG off, waits until each answers /readyz, prints the URL and
returns; the processes keep running. Their PIDs are recorded in .prod-local/state.json (the
run directory, git-ignored, which also holds the generated secret key, the logs, nginx's
files and the sandbox bank's ledger). `stop` stops exactly the processes recorded there,
after checking that each PID is still the process that was started (not a recycled PID).
`start` stops a previous run first, so starting twice leaves nothing behind.

Tests and the fault suite use the Topology class directly: it starts the same processes
as children of the test (they die with it), on any database and Redis, and can kill or
restart any one of them (`daphne1`..`daphneN`, `worker`, `nginx`).
"""

import argparse
import contextlib
import fcntl
import getpass
import grp
import json
import os
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT = Path(__file__).resolve().parent.parent
TEMPLATE = PROJECT / "deploy" / "nginx.conf.template"
DEFAULT_RUN_DIR = PROJECT / ".prod-local"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/shop_prod_local"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
PR_SET_PDEATHSIG = 1
# Variables that would change what the processes do if they leaked in from the caller's shell.
PROJECT_VARIABLE_PREFIXES = ("DJANGO_", "DATABASE_", "PAYMENT_", "SANDBOX_BANK_")
PROJECT_VARIABLES = {"REDIS_URL", "DEFAULT_FROM_EMAIL"}


def free_port() -> int:
    """Return a port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone or a zombie.

    A PID and its start time name one process: a PID reused by another process has another.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # The command name may hold spaces: skip it.
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def process_children(pid: int) -> list[int]:
    """The PIDs of `pid`'s children (nginx's workers), read from /proc."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """For a test's children: the kernel sends SIGTERM when the test process dies."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def render_nginx_conf(
    *,
    run_dir: Path,
    listen: str,
    upstreams: list[str],
    static_root: Path,
    media_root: Path,
    server_name: str = "127.0.0.1 localhost",
    expose_upstream: bool = False,
    worker_processes: str = "1",
    mime_types: str = "/etc/nginx/mime.types",
) -> str:
    """Fill deploy/nginx.conf.template; `upstreams` are daphne addresses ("127.0.0.1:8001")."""
    if os.geteuid() == 0:
        # nginx started by root hands its workers to `nobody` unless told otherwise; the run
        # directory belongs to the user who started it.
        user_line = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};"
    else:
        user_line = ""  # An unprivileged master cannot switch users; the directive would only warn.
    servers = "\n        ".join(f"server {address} max_fails=1 fail_timeout=5s;" for address in upstreams)
    values = {
        "NGINX_USER_LINE": user_line,
        "NGINX_WORKER_PROCESSES": worker_processes,
        "NGINX_MIME_TYPES": mime_types,
        "SHOP_RUN_DIR": str(run_dir),
        "SHOP_LISTEN": listen,
        "SHOP_SERVER_NAME": server_name,
        "SHOP_UPSTREAMS": servers,
        "SHOP_STATIC_ROOT": str(static_root).rstrip("/"),
        "SHOP_MEDIA_ROOT": str(media_root).rstrip("/"),
        "SHOP_UPSTREAM_HEADER": "add_header X-Upstream $upstream_addr always;" if expose_upstream else "",
    }
    # safe_substitute leaves nginx's own variables ($host, $upstream_addr...) alone.
    text = string.Template(TEMPLATE.read_text()).safe_substitute(values)
    if leftover := re.findall(r"\$\{\w+\}", text):
        raise ValueError(f"nginx.conf.template has placeholders nobody fills: {sorted(set(leftover))}")
    return text


class Topology:
    """nginx, `daphnes` daphne processes and one task worker, on 127.0.0.1 ports chosen at start().

    After start(): `url` (nginx), `ws_url`, `nginx_port`, `daphne_ports`, `daphne_urls`, `pids`
    (name -> PID), `log_path(name)`. Names: daphne1..daphneN, worker, nginx.

    `detach=True` (make prod-local) starts the processes in sessions of their own that outlive
    this Python process; otherwise (tests) they are children that die with it: the kernel
    signals them when the *thread* that started them ends, so call start() and
    restart_process() from the test's main thread. The database must exist and be migrated
    (prepare_database() does it for make prod-local). The worker is not restarted if it exits
    (it does on a database error, after the pool's timeout): restart_process("worker").
    """

    startup_timeout = 30.0
    stop_timeout = 20.0  # The worker finishes the task it runs (an email gives up after 10 s).

    def __init__(
        self,
        *,
        run_dir: Path = DEFAULT_RUN_DIR,
        database_url: str = DEFAULT_DATABASE_URL,
        redis_url: str = DEFAULT_REDIS_URL,
        daphnes: int = 3,
        detach: bool = False,
        expose_upstream: bool = True,
        secret_key: str | None = None,
        bank_latency_ms: int | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        self.run_dir = Path(run_dir).resolve()
        self.database_url = database_url
        self.redis_url = redis_url
        self.daphne_count = daphnes
        self.detach = detach
        self.expose_upstream = expose_upstream
        self.bank_latency_ms = bank_latency_ms
        self.extra_env = dict(extra_env or {})
        self._secret_key = secret_key
        self.nginx_port: int | None = None
        self.daphne_ports: list[int] = []
        self.processes: dict[str, subprocess.Popen] = {}
        # name -> {"pid", "start_time", "port"}: what stop() may signal (also read back from state.json).
        self.records: dict[str, dict] = {}

    # Paths and addresses ------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def static_root(self) -> Path:
        return self.run_dir / "static"

    @property
    def media_root(self) -> Path:
        return self.run_dir / "media"

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.nginx_port}"

    @property
    def daphne_names(self) -> list[str]:
        return [f"daphne{number}" for number in range(1, self.daphne_count + 1)]

    @property
    def daphne_urls(self) -> dict[str, str]:
        return {
            name: f"http://127.0.0.1:{port}" for name, port in zip(self.daphne_names, self.daphne_ports, strict=True)
        }

    @property
    def pids(self) -> dict[str, int]:
        return {name: record["pid"] for name, record in self.records.items()}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def secret_key(self) -> str:
        """The key every process shares (sessions made by one are read by the others).

        Generated once into the run directory (git-ignored, mode 600) and kept across runs,
        so that sessions survive a restart.
        """
        if self._secret_key is None:
            path = self.run_dir / "secret-key"
            if not path.exists():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(secrets.token_urlsafe(50))
            self._secret_key = path.read_text().strip()
        return self._secret_key

    def environment(self) -> dict[str, str]:
        """The environment of every process: production settings, this topology's services."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(PROJECT_VARIABLE_PREFIXES) and name not in PROJECT_VARIABLES
        }
        origins = [f"http://127.0.0.1:{self.nginx_port}", f"http://localhost:{self.nginx_port}"]
        env.update(
            DJANGO_SETTINGS_MODULE="shop.settings",
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY=self.secret_key,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_CSRF_TRUSTED_ORIGINS=",".join(origins),
            # Plain http://127.0.0.1: a Secure cookie would never come back. A real site keeps them on.
            DJANGO_SECURE_COOKIES="false",
            # nginx serves /static/ from here (hashed names, from the manifest storage).
            DJANGO_SERVE_STATIC="false",
            DJANGO_STATIC_MANIFEST="true",
            DJANGO_STATIC_ROOT=str(self.static_root),
            # Uploads (product photos) of this run; nginx serves them at /media/.
            DJANGO_MEDIA_ROOT=str(self.media_root),
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SANDBOX_BANK_LEDGER=str(self.run_dir / "sandbox-bank.sqlite3"),
            PYTHONUNBUFFERED="1",
        )
        if urlsplit(self.database_url).scheme.startswith("postgres"):
            # Django's pool, CONN_MAX_AGE 0. The shared PostgreSQL allows 100 connections:
            # (N daphne + worker) x 10 leaves room for everyone else.
            env.update(DATABASE_POOL="true", DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="10")
        if self.bank_latency_ms is not None:
            env["SANDBOX_BANK_LATENCY_MS"] = str(self.bank_latency_ms)
        env.update(self.extra_env)
        return env

    # Preparation ------------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 300) -> str:
        """Run `python manage.py ...` with this topology's environment; return its output."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
        return result.stdout

    def prepare_database(self, *, seed: bool = True) -> None:
        """Create the PostgreSQL database if missing, migrate it, and load the demo data."""
        create_postgres_database(self.database_url)
        self.manage("migrate", "--noinput")
        if seed:
            self.manage("seed_demo")

    def collect_static(self) -> None:
        self.manage("collectstatic", "--noinput", "--verbosity", "0")

    # Start and stop -----------------------------------------------------------------------

    def start(self, *, collect_static: bool = True) -> "Topology":
        """Start the daphne processes, the worker and nginx; return once each is ready.

        On any failure everything started so far is stopped before the error is raised.
        """
        if any(self.is_running(name) for name in self.records):
            raise RuntimeError("this topology is running already: stop() it first")
        for directory in (self.log_dir, self.run_dir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.records = {}
        self.nginx_port = free_port()
        self.daphne_ports = [free_port() for _name in self.daphne_names]
        try:
            if collect_static:
                self.collect_static()
            for name in self.daphne_names:
                self._spawn(name)
            self._spawn("worker")
            for name in self.daphne_names:
                self._wait_ready_or_move(name)
            self.write_nginx_conf()
            self._spawn("nginx")
            self._wait_ready_or_move("nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict[str, float]:
        """Stop every process this topology started (nginx first); return how long each took."""
        took: dict[str, float] = {}
        if "nginx" in self.records:
            took["nginx"] = self.stop_process("nginx")
        rest = [name for name in self.records if name != "nginx"]
        started = time.monotonic()
        for name in rest:
            self._signal(name, signal.SIGTERM)
        for name in rest:
            self._wait_gone(name, deadline=started + self.stop_timeout)
            took[name] = time.monotonic() - started
        self._write_state()
        return took

    def stop_process(self, name: str, *, sig: int = signal.SIGTERM) -> float:
        """Stop one process (SIGTERM, or `sig`; SIGKILL after stop_timeout); return the seconds it took."""
        started = time.monotonic()
        self._signal(name, sig)
        self._wait_gone(name, deadline=started + self.stop_timeout)
        self._write_state()
        return time.monotonic() - started

    def kill(self, name: str) -> None:
        """Kill one process outright (SIGKILL), as a crash would."""
        self.stop_process(name, sig=signal.SIGKILL)

    def restart_process(self, name: str) -> None:
        """Start `name` again (after kill() or stop_process()), on the same port; return once it is ready."""
        if self.is_running(name):
            self.stop_process(name)
        self._spawn(name)
        self.wait_ready(name)

    def is_running(self, name: str) -> bool:
        record = self.records.get(name)
        if record is None:
            return False
        process = self.processes.get(name)
        if process is not None:
            return process.poll() is None
        return process_start_time(record["pid"]) == record["start_time"]

    def wait_ready(self, name: str) -> None:
        """Wait until a daphne (or nginx) answers /readyz with 200, or the worker is still up after a moment."""
        deadline = time.monotonic() + self.startup_timeout
        if name == "worker":
            time.sleep(0.5)
            if not self.is_running(name):
                raise RuntimeError(f"the worker exited at start:\n{self.log_tail(name)}")
            return
        port = self.nginx_port if name == "nginx" else self.daphne_ports[self.daphne_names.index(name)]
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.is_running(name):
                raise RuntimeError(f"{name} exited at start:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = f"/readyz answered {error.code}: {error.read()[:200]!r}"
            except (urllib.error.URLError, OSError) as error:
                last = f"/readyz failed: {error}"
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {self.startup_timeout:.0f} s ({last}):\n{self.log_tail(name)}")

    def _wait_ready_or_move(self, name: str, attempts: int = 3) -> None:
        """wait_ready(); if another process took the port between probe and bind, start on a new one."""
        for attempt in range(1, attempts + 1):
            try:
                self.wait_ready(name)
                return
            except RuntimeError as error:
                if "in use" not in str(error) or attempt == attempts:
                    raise
            self._wait_gone(name, deadline=time.monotonic() + self.stop_timeout)
            if name == "nginx":
                self.nginx_port = free_port()
                self.write_nginx_conf()
            else:
                self.daphne_ports[self.daphne_names.index(name)] = free_port()
            self._spawn(name)

    def write_nginx_conf(self) -> Path:
        path = self.run_dir / "nginx.conf"
        path.write_text(
            render_nginx_conf(
                run_dir=self.run_dir,
                listen=f"127.0.0.1:{self.nginx_port}",
                upstreams=[f"127.0.0.1:{port}" for port in self.daphne_ports],
                static_root=self.static_root,
                media_root=self.media_root,
                expose_upstream=self.expose_upstream,
            )
        )
        return path

    def _command(self, name: str) -> list[str]:
        if name == "nginx":
            # Not daemonized: the PID we get is the master's. -e: the compiled-in error log
            # (/var/log/nginx) is opened before the configuration is read.
            return [NGINX, "-p", str(self.run_dir), "-c", str(self.run_dir / "nginx.conf")] + [
                "-e",
                str(self.log_dir / "nginx-error.log"),
                "-g",
                "daemon off;",
            ]
        if name == "worker":
            return [sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay"]
        port = self.daphne_ports[self.daphne_names.index(name)]
        daphne = str(Path(sys.executable).parent / "daphne")
        # --proxy-headers: the client address and scheme come from nginx's X-Forwarded-For and
        # X-Forwarded-Proto (login rate limits count per shopper, not per proxy). Safe only
        # because daphne listens on 127.0.0.1, where nobody but nginx reaches it.
        return [daphne, "--bind", "127.0.0.1", "--port", str(port), "--proxy-headers", "shop.asgi:application"]

    def _spawn(self, name: str) -> None:
        with open(self.log_path(name), "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            log.flush()
            process = subprocess.Popen(
                self._command(name),
                cwd=PROJECT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches only this script.
                start_new_session=True,
                preexec_fn=None if self.detach else _die_with_parent(os.getpid()),
            )
        self.processes[name] = process
        port = self.nginx_port if name == "nginx" else None
        if name in self.daphne_names:
            port = self.daphne_ports[self.daphne_names.index(name)]
        self.records[name] = {"pid": process.pid, "start_time": process_start_time(process.pid), "port": port}
        # Written at once: if this script dies halfway, `stop` still knows what runs.
        self._write_state()

    def _signal(self, name: str, sig: int) -> None:
        if not self.is_running(name):
            return
        pid = self.records[name]["pid"]
        if sig == signal.SIGKILL and name == "nginx":
            # A killed master leaves its workers behind: they are ours too.
            for child in process_children(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _wait_gone(self, name: str, *, deadline: float) -> None:
        killed = False
        while self.is_running(name):
            if time.monotonic() > deadline and not killed:
                self._signal(name, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 5
            elif time.monotonic() > deadline:
                raise RuntimeError(f"{name} (pid {self.records[name]['pid']}) survived SIGKILL")
            time.sleep(0.05)

    def _write_state(self) -> None:
        if not self.run_dir.exists():
            return
        running = {name: record for name, record in self.records.items() if self.is_running(name)}
        if not running:
            self.state_path.unlink(missing_ok=True)
            return
        state = {
            "url": self.url,
            "nginx_port": self.nginx_port,
            "daphne_ports": self.daphne_ports,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "processes": running,
        }
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.state_path)

    @classmethod
    def from_state(cls, run_dir: Path = DEFAULT_RUN_DIR) -> "Topology | None":
        """The topology a previous `start` recorded in `run_dir` (None if nothing is recorded)."""
        state_path = Path(run_dir) / "state.json"
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        topology = cls(
            run_dir=run_dir,
            database_url=state["database_url"],
            redis_url=state["redis_url"],
            daphnes=len(state["daphne_ports"]),
            detach=True,
        )
        topology.nginx_port = state["nginx_port"]
        topology.daphne_ports = state["daphne_ports"]
        topology.records = state["processes"]
        return topology


# Services --------------------------------------------------------------------------------


def create_postgres_database(database_url: str) -> bool:
    """Create the database `database_url` names if it does not exist; return whether it was created."""
    parts = urlsplit(database_url)
    if not parts.scheme.startswith("postgres"):
        return False
    import psycopg
    from psycopg import sql

    name = parts.path.lstrip("/")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def check_services(database_url: str, redis_url: str) -> list[str]:
    """Say what is missing: PostgreSQL, Redis, nginx."""
    problems = []
    parts = urlsplit(database_url)
    if parts.scheme.startswith("postgres"):
        import psycopg

        try:
            with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), connect_timeout=3):
                pass
        except psycopg.Error as error:
            problems.append(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is unreachable: {error}".strip())
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        problems.append(f"Redis at {redis_url} is unreachable: {error}")
    finally:
        client.close()
    if not Path(NGINX).exists():
        problems.append(f"no nginx at {NGINX} (apt-get install nginx, or set NGINX=/path/to/nginx)")
    return problems


# Command line ----------------------------------------------------------------------------


@contextlib.contextmanager
def locked(run_dir: Path):
    """One start or stop at a time for a run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stop_recorded(run_dir: Path) -> bool:
    """Stop what state.json records in `run_dir`; return whether anything was recorded."""
    previous = Topology.from_state(run_dir)
    if previous is None:
        return False
    alive = {name: record["pid"] for name, record in previous.records.items() if previous.is_running(name)}
    gone = sorted(set(previous.records) - set(alive))
    print(f"prod-local: stopping {', '.join(f'{name} (pid {pid})' for name, pid in alive.items()) or 'nothing'}")
    if gone:
        print(f"prod-local: already gone: {', '.join(gone)}")
    previous.stop()
    previous.state_path.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--daphnes", type=int, default=3, help="daphne processes behind nginx (default 3)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    options = parser.parse_args(argv)
    run_dir = options.run_dir.resolve()

    with locked(run_dir):
        if options.action == "stop":
            if not stop_recorded(run_dir):
                print("prod-local: nothing recorded as running")
            return 0
        if options.action == "status":
            topology = Topology.from_state(run_dir)
            if topology is None:
                print("prod-local: not running")
                return 1
            for name, record in topology.records.items():
                state = "running" if topology.is_running(name) else "GONE"
                print(f"{name:8} pid {record['pid']:>7}  port {record['port'] or '-':>5}  {state}")
            print(f"URL: {topology.url}")
            return 0

        if stop_recorded(run_dir):
            print("prod-local: the previous run is stopped; starting a new one")
        problems = check_services(options.database_url, options.redis_url)
        if problems:
            print("prod-local cannot start:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        topology = Topology(
            run_dir=run_dir,
            database_url=options.database_url,
            redis_url=options.redis_url,
            daphnes=options.daphnes,
            detach=True,
        )
        started = time.monotonic()
        print(
            f"prod-local: preparing {urlsplit(options.database_url).path.lstrip('/')} (migrate, seed_demo)...",
            flush=True,
        )
        topology.prepare_database()
        print("prod-local: collectstatic, then starting the processes...", flush=True)
        try:
            topology.start()
        except RuntimeError as error:
            print(f"prod-local failed to start: {error}", file=sys.stderr)
            return 1
        daphnes = ", ".join(
            f"{name} :{port} (pid {topology.pids[name]})"
            for name, port in zip(topology.daphne_names, topology.daphne_ports, strict=True)
        )
        print(
            f"prod-local is up in {time.monotonic() - started:.1f} s (DEBUG off, PostgreSQL + Redis):\n"
            f"  nginx  :{topology.nginx_port} (pid {topology.pids['nginx']}) -> {daphnes}\n"
            f"  worker pid {topology.pids['worker']}; logs in {topology.log_dir}\n"
            f"  logins: customer1..customer3 and admin, password shop-demo-2026\n"
            f"  stop it with: make prod-local-stop\n"
            f"{topology.url}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

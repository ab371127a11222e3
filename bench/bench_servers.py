"""Processes and resources the benchmark starts: daphne servers, a task worker, a throw-away
PostgreSQL database, port and process probes.

Everything binds 127.0.0.1 on a free port, and everything started here is stopped by the
caller in a `finally`; the child processes also die with the bench (PR_SET_PDEATHSIG).
"""

import os
import resource
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

# Started as `python -c <this> <bench pid> <program> <args...>`: ask the kernel to SIGTERM the
# process when the bench dies (PR_SET_PDEATHSIG = 1 survives exec), then become <program>. A
# wrapper instead of Popen(preexec_fn=...), which is unsafe once the bench runs threads.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the benchmark ended before this server started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_bench(command: list[str]) -> list[str]:
    """Wrap `command` so that it gets SIGTERM when the bench process ends, however it ends."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def free_port() -> int:
    """Return a port nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_manage(root: Path, python: Path, env: dict, *args: str, timeout: float = 120) -> str:
    """Run `manage.py <args>` with the bench's environment; raise with its output if it fails."""
    done = subprocess.run(
        dying_with_bench([str(python), "manage.py", *args]),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


class DaphneServer:
    """One `daphne shop.asgi:application` on a free 127.0.0.1 port, with its own log file."""

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        daphne: Path,
        env: dict,
        log_dir: Path,
        app: str = "bench.bench_asgi:application",
    ):
        self.name, self.app = name, app
        self.root, self.daphne, self.env = root, daphne, env
        self.port = free_port()
        self.log_path = log_dir / f"daphne-{name}.log"
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout: float = 30.0) -> "DaphneServer":
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            dying_with_bench([str(self.daphne), "-b", "127.0.0.1", "-p", str(self.port), self.app]),
            cwd=self.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne {self.name} exited with {self.process.returncode}; see {self.log_path}")
            if port_answers(self.port):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"daphne {self.name} did not listen on port {self.port} within {ready_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_command(port: int, *parts: str, db: int | None = None, timeout: float = 1.0) -> list[bytes]:
    """Send commands to Redis on 127.0.0.1 (RESP, no client library); return the reply lines."""
    commands = ([("SELECT", str(db))] if db is not None else []) + [parts]
    payload = b"".join(
        f"*{len(command)}\r\n".encode() + b"".join(f"${len(p)}\r\n{p}\r\n".encode() for p in command)
        for command in commands
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(payload)
        received = b""
        deadline = time.monotonic() + timeout
        while received.count(b"\r\n") < len(commands) and time.monotonic() < deadline:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n")[: len(commands)]


def redis_reachable(port: int) -> str | None:
    """Return None if Redis answers PING on 127.0.0.1:`port`, else the reason it does not."""
    try:
        reply = redis_command(port, "PING")
    except OSError as error:
        return f"Redis at 127.0.0.1:{port} is unreachable ({error.strerror or error})"
    if reply[:1] != [b"+PONG"]:
        return f"Redis at 127.0.0.1:{port} answered {reply!r} to PING"
    return None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Worker:
    """`manage.py db_worker` (the task worker) beside the servers, with its own log file.

    `name` names the log file (several workers side by side); `args` go to db_worker after
    `--no-reload` (e.g. `--no-startup-delay`).
    """

    def __init__(
        self, *, root: Path, python: Path, env: dict, log_dir: Path, name: str = "worker", args: tuple[str, ...] = ()
    ):
        self.root, self.python, self.env = root, python, env
        self.name, self.args = name, list(args)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "Worker":
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            dying_with_bench([str(self.python), "manage.py", "db_worker", "--no-reload", *self.args]),
            cwd=self.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


class PostgresDatabase:
    """A database of this run's own on the shared PostgreSQL server: created, then dropped.

    Its name is unique (pid and random), so two runs, or a run beside the test suite, never meet.
    """

    def __init__(self, server_url: str):
        import psycopg

        self.psycopg = psycopg
        self.server_url = server_url.rstrip("/")
        self.name = f"shop_bench_{os.getpid()}_{secrets.token_hex(3)}"

    @property
    def url(self) -> str:
        return f"{self.server_url}/{self.name}"

    def _admin(self):
        return self.psycopg.connect(f"{self.server_url}/postgres", autocommit=True, connect_timeout=5)

    def create(self) -> "PostgresDatabase":
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def max_connections(self) -> int:
        with self._admin() as connection:
            return int(connection.execute("SHOW max_connections").fetchone()[0])


def postgres_problem(server_url: str) -> str | None:
    """Return None if PostgreSQL answers at `server_url`, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(f"{server_url.rstrip('/')}/postgres", connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as error:
        return f"PostgreSQL at {server_url} is unreachable ({str(error).strip().splitlines()[0]})"
    return None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's open-files limit (inherited by every server and client) to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_stats(pid: int) -> dict:
    """RSS (KiB), CPU seconds (user + system) and threads of a running process, from /proc."""
    stats = {"rss_kib": None, "cpu_s": None, "threads": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                stats["rss_kib"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                stats["threads"] = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        stats["cpu_s"] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        pass
    return stats


def open_files(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def machine_description() -> dict:
    """What the figures ran on: CPU model and count, memory, kernel, Python, PostgreSQL and Redis come later."""
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        memory_kib = 0
    return {
        "cpu_model": model,
        "cpus": cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }

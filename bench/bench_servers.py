"""Processes and sockets the benchmark starts: daphne servers, a black-hole "Redis", port probes.

Everything binds 127.0.0.1 on a free port, and everything started here is stopped by the
caller in a `finally`; the child processes also die with the bench (PR_SET_PDEATHSIG).
"""

import os
import socket
import subprocess
import sys
import threading
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

    def __init__(self, *, name: str, root: Path, daphne: Path, env: dict, log_dir: Path):
        self.name = name
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
            dying_with_bench([str(self.daphne), "-b", "127.0.0.1", "-p", str(self.port), "shop.asgi:application"]),
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


class BlackHoleServer:
    """A TCP server that accepts connections and never answers: a Redis that hangs.

    Accepted sockets are held open (never read, never written) until stop().
    """

    def __init__(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_forever, name="black-hole", daemon=True)

    def start(self) -> "BlackHoleServer":
        self._thread.start()
        return self

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(connection)

    def still_open(self) -> int:
        """How many accepted connections the client has not closed (drains what it sent)."""
        open_count = 0
        for connection in list(self.held):
            connection.setblocking(False)
            try:
                while connection.recv(65536):
                    pass
            except BlockingIOError:
                open_count += 1
            except OSError:
                pass
        return open_count

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._listener.close()
        for connection in self.held:
            connection.close()


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


def flush_redis_db(port: int, db: int) -> None:
    reply = redis_command(port, "FLUSHDB", db=db)
    if reply != [b"+OK", b"+OK"]:
        raise RuntimeError(f"FLUSHDB on Redis db {db} answered {reply!r}")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

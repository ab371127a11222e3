"""Servers of a test's own, for fault injection: a PostgreSQL cluster and a redis-server.

Fault tests stop, restart or pause these; the shared PostgreSQL (5432) and Redis (6379)
are never touched. Each server is a child process of the test (the postmaster or
redis-server itself, not a wrapper), listens on a free port of 127.0.0.1, is stopped by
its PID, and dies with the test process if that is killed (PR_SET_PDEATHSIG). Its files
live in a temporary directory removed at teardown.

Also here: HttpShopper, a plain-HTTP shopper (cookies, forms, CSRF) for tests that drive
a LiveDaphne without a browser.

Registered as a plugin by tests/conftest.py (fixtures own_postgres, own_redis).
"""

import ctypes
import http.client
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
import redis
from django.conf import settings

from tests.live import free_port

ON_CI = os.environ.get("CI", "").lower() == "true"
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int, signal_number: int) -> Callable[[], None]:
    """Ask the kernel to send `signal_number` to the child when the test process dies.

    Runs after Popen has switched user: a change of credentials clears the setting.
    """

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal_number)
        if os.getppid() != parent_pid:  # The parent died before prctl took effect.
            os._exit(1)

    return preexec


def _missing(problem: str) -> None:
    """Skip a test whose server cannot run here; under CI=true that is a failure, never a skip."""
    if ON_CI:
        pytest.fail(f"CI=true but {problem}", pytrace=False)
    pytest.skip(problem)


def _log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# PostgreSQL --------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The directory holding initdb and postgres (PG_BINDIR, Debian's newest, or initdb on PATH)."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(
        (str(path.parent) for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda bindir: int(Path(bindir).parent.name) if Path(bindir).parent.name.isdigit() else 0,
        reverse=True,
    )
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster (trust auth, superuser `postgres`) on a free port of 127.0.0.1.

    PostgreSQL refuses to run as root: under root the cluster runs as the `postgres` OS user
    and its directory is handed to that user. Durability is off (fsync, full-page writes):
    the data lives as long as the test.
    """

    startup_timeout = 20.0
    shutdown_timeout = 15.0

    def __init__(self, *, name: str = "pg", settings: dict[str, str] | None = None):
        self.name = name
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, postgres) found")
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "60",
            **(settings or {}),
        }
        self.base = Path(tempfile.mkdtemp(prefix=f"shop-{name}-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sockets"
        self.log_path = self.base / "postgres.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._log = None
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.socket_dir.mkdir()
        if self._user is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def init(self) -> "PostgresCluster":
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            cwd=self.base,
            **self._as_owner(),
        )
        return self

    def start(self) -> "PostgresCluster":
        """Start the postmaster (on the previous port after stop()); return once it accepts connections."""
        keep_port = self.port is not None
        problem = "not started"
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port()
            problem = self._spawn_and_wait()
            if problem is None:
                return self
            if "could not bind" not in problem and "already in use" not in problem:
                break
            if keep_port:
                time.sleep(0.5)  # The old socket is still closing.
        raise RuntimeError(f"PostgreSQL {self.name} did not start on port {self.port}: {problem}")

    def _spawn_and_wait(self) -> str | None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by stop()
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        command += ["-k", str(self.socket_dir)]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        self.process = subprocess.Popen(
            command,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing waits for clients.
            preexec_fn=_die_with_parent(os.getpid(), signal.SIGINT),
            **self._as_owner(),
        )
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                return f"exited with code {self.process.returncode}:\n{_log_tail(self.log_path)}"
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return None
            except psycopg.Error as error:
                last = str(error).strip()
            time.sleep(0.05)
        self.stop(mode="immediate")
        return f"not ready after {self.startup_timeout:.0f} s ({last}):\n{_log_tail(self.log_path)}"

    def stop(self, *, mode: str = "fast") -> float:
        """Stop the postmaster by its PID ("fast": SIGINT, "immediate": SIGQUIT); return the seconds it took."""
        started = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            try:
                self.process.wait(timeout=self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_log()
        return time.monotonic() - started

    def restart(self, *, down_for: float = 0.0, mode: str = "fast") -> dict[str, float]:
        """Stop, stay down `down_for` seconds, start on the same port; return how long each step took."""
        stopped = self.stop(mode=mode)
        time.sleep(down_for)
        began = time.monotonic()
        self.start()
        return {"stop_s": stopped, "down_s": down_for, "start_s": time.monotonic() - began}

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements in autocommit mode (CREATE DATABASE cannot run in a transaction)."""
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as connection:
            for statement in statements:
                connection.execute(statement)

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def cleanup(self) -> None:
        self.stop(mode="fast")
        shutil.rmtree(self.base, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test module's own, started; stopped and removed after the module.

    A test that stops it starts it again (restart() does both), or the next test finds it down.
    """
    if postgres_bindir() is None:
        _missing("no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no `postgres` OS user to run PostgreSQL as")
    cluster = PostgresCluster(name="own-pg")
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.cleanup()


# Redis ---------------------------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server (no persistence) on a free port of 127.0.0.1."""

    startup_timeout = 10.0

    def __init__(self, *, name: str = "redis"):
        self.name = name
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError("no redis-server on PATH")
        self.base = Path(tempfile.mkdtemp(prefix=f"shop-{name}-"))
        self.log_path = self.base / "redis.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "RedisServer":
        """Start (on the previous port after stop()); return once it answers PING."""
        keep_port = self.port is not None
        problem = "not started"
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port()
            problem = self._spawn_and_wait()
            if problem is None:
                return self
            if "Address already in use" not in problem:
                break
            if keep_port:
                time.sleep(0.5)
        raise RuntimeError(f"redis-server {self.name} did not start on port {self.port}: {problem}")

    def _spawn_and_wait(self) -> str | None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by stop()
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.base), "--daemonize", "no"],
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(os.getpid(), signal.SIGTERM),
        )
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                return f"exited with code {self.process.returncode}:\n{_log_tail(self.log_path)}"
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.ping():
                    return None
            except redis.RedisError as error:
                last = str(error)
            finally:
                client.close()
            time.sleep(0.05)
        self.stop()
        return f"not ready after {self.startup_timeout:.0f} s ({last}):\n{_log_tail(self.log_path)}"

    def stop(self) -> None:
        """Terminate by PID (SIGCONT first, in case it is paused); kill after 5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_log()

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, started; stopped and removed after the test."""
    if shutil.which("redis-server") is None:
        _missing("no redis-server on PATH: apt-get install redis-server")
    server = RedisServer(name="own-redis")
    try:
        yield server.start()
    finally:
        server.cleanup()


# Plain-HTTP shopper --------------------------------------------------------------------------


class FormCollector(HTMLParser):
    """Collect every <form> of a page: its attributes and the name -> value of its inputs."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = {"attrs": attributes, "fields": {}}
            self.forms.append(self._current)
        elif tag in {"input", "select", "textarea"} and self._current is not None and attributes.get("name"):
            self._current["fields"][attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


@dataclass
class Answer:
    method: str
    path: str
    status: int
    location: str
    body: str
    elapsed: float
    headers: dict[str, str] = field(default_factory=dict)

    def form(self, *, action: str) -> dict[str, str]:
        """The inputs of the page's form posting to `action`."""
        collector = FormCollector()
        collector.feed(self.body)
        for form in collector.forms:
            if urlsplit(form["attrs"].get("action", "")).path == action:
                return dict(form["fields"])
        raise AssertionError(f"{self.method} {self.path} ({self.status}) has no form posting to {action}")


class HttpShopper:
    """A shopper speaking plain HTTP to a live server: keeps cookies, posts forms with CSRF.

    Redirects are not followed unless asked (follow()), so a test sees each answer; every
    request has a timeout.
    """

    def __init__(self, base_url: str, *, cookies: dict[str, str] | None = None, timeout: float = 30.0):
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = dict(cookies or {})
        self.timeout = timeout

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> Answer:
        headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        body = None
        if method == "POST":
            body = urlencode(fields or {})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            # Django's CSRF check compares the Origin with the host.
            headers["Origin"] = self.base_url
            headers["Referer"] = f"{self.base_url}{path}"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        started = time.monotonic()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        elapsed = time.monotonic() - started
        jar = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        for name, morsel in jar.items():
            if morsel.value:
                self.cookies[name] = morsel.value
            else:
                self.cookies.pop(name, None)  # Django deletes a cookie by sending it empty.
        return Answer(
            method=method,
            path=path,
            status=response.status,
            location=response.headers.get("Location", ""),
            body=text,
            elapsed=elapsed,
            headers=dict(response.headers.items()),
        )

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str]) -> Answer:
        return self.request("POST", path, fields)

    def follow(self, answer: Answer, *, max_hops: int = 5) -> list[Answer]:
        """GET each redirect target from `answer` on; return the answers after it (the last one is not a redirect)."""
        chain = []
        for _hop in range(max_hops):
            if answer.status not in {301, 302, 303, 307, 308}:
                break
            target = urlsplit(answer.location)
            answer = self.get(target.path + (f"?{target.query}" if target.query else ""))
            chain.append(answer)
        return chain

    def sign_in(self, username: str, password: str) -> Answer:
        """Sign in through the real login form; raise unless it let us in."""
        form = self.get("/accounts/login/").form(action="/accounts/login/")
        answer = self.post("/accounts/login/", {**form, "username": username, "password": password})
        if answer.status != 302 or settings.SESSION_COOKIE_NAME not in self.cookies:
            raise AssertionError(f"login as {username} answered {answer.status}, not a redirect with a session")
        return answer


# A mail server of the test's own -------------------------------------------------------------


@dataclass
class SmtpMessage:
    """One message the fake server took (answered 250 after DATA)."""

    sender: str
    recipients: list[str]
    data: bytes

    @property
    def subject(self) -> str:
        from email import message_from_bytes

        return str(message_from_bytes(self.data).get("Subject", ""))


class FakeSmtpServer:
    """A minimal SMTP responder (asyncio, in a thread of its own) on a free port of 127.0.0.1.

    It speaks what Django's SMTP backend needs (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
    QUIT; no TLS, no AUTH) and keeps every message it answered 250 to in `accepted`. A
    message counts only once that reply is sent, as with a real server: the client may
    still crash before reading it, but not before the server took it.

    hold_next_data() makes the server sit on its reply to the next message's final "."
    (the moment a client waits for "queued"): `held` is set while it waits, and the
    message is taken only if release() comes before the client hangs up. A client that
    disconnects meanwhile leaves the message in `abandoned` instead.
    """

    def __init__(self):
        import asyncio
        import threading

        self._asyncio = asyncio
        self.port: int | None = None
        self.accepted: list[SmtpMessage] = []
        self.abandoned: list[SmtpMessage] = []
        self.held = threading.Event()
        self._hold_armed = False
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> "FakeSmtpServer":
        import threading

        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._asyncio.new_event_loop()
            self._loop = loop
            try:
                self._release = self._asyncio.Event()
                self._server = loop.run_until_complete(
                    self._asyncio.start_server(self._session, "127.0.0.1", 0, reuse_address=True)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                loop.run_until_complete(self._server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10) or failure:
            raise RuntimeError(f"the fake SMTP server did not start: {failure}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def hold_next_data(self) -> None:
        """Hold the reply to the next message's DATA until release() (or the client hangs up)."""
        with self._lock:
            self.held.clear()
            self._hold_armed = True
        self._loop.call_soon_threadsafe(self._release.clear)

    def release(self) -> None:
        with self._lock:
            self._hold_armed = False
        self._loop.call_soon_threadsafe(self._release.set)

    def subjects(self) -> list[str]:
        with self._lock:
            return [message.subject for message in self.accepted]

    async def _session(self, reader, writer) -> None:
        asyncio = self._asyncio

        async def reply(line: str) -> None:
            writer.write(f"{line}\r\n".encode())
            await writer.drain()

        sender, recipients = "", []
        try:
            await reply("220 fake-smtp ready")
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout=60)
                if not line:
                    return
                command = line.decode(errors="replace").strip()
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await reply("250-fake-smtp")
                    await reply("250 8BITMIME")
                elif verb == "HELO":
                    await reply("250 fake-smtp")
                elif verb == "MAIL":
                    sender, recipients = command.split(":", 1)[1].strip(" <>"), []
                    await reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip(" <>"))
                    await reply("250 OK")
                elif verb == "DATA":
                    await reply("354 End data with <CR><LF>.<CR><LF>")
                    lines = []
                    while (body_line := await asyncio.wait_for(reader.readline(), timeout=60)) not in {b".\r\n", b""}:
                        lines.append(body_line[1:] if body_line.startswith(b"..") else body_line)
                    message = SmtpMessage(sender=sender, recipients=recipients, data=b"".join(lines))
                    if not await self._may_take(reader):
                        with self._lock:
                            self.abandoned.append(message)
                        return
                    with self._lock:
                        self.accepted.append(message)
                    await reply("250 OK queued")
                elif verb in {"RSET", "NOOP"}:
                    await reply("250 OK")
                elif verb == "QUIT":
                    await reply("221 Bye")
                    return
                else:
                    await reply("502 Command not implemented")
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _may_take(self, reader) -> bool:
        """False if the reply is held and the client hangs up before release()."""
        with self._lock:
            hold = self._hold_armed
            self._hold_armed = False
        if not hold:
            return True
        self.held.set()
        asyncio = self._asyncio
        # A client that hangs up shows as end-of-file on its side of the connection.
        hung_up = asyncio.ensure_future(reader.read(1))
        released = asyncio.ensure_future(self._release.wait())
        done, pending = await asyncio.wait({hung_up, released}, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        return released in done and not (hung_up in done and hung_up.result() == b"")


@pytest.fixture
def fake_smtp() -> Iterator[FakeSmtpServer]:
    """A fake SMTP server of this test's own; stopped after the test."""
    server = FakeSmtpServer().start()
    try:
        yield server
    finally:
        server.stop()

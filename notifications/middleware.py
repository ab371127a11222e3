import asyncio
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from types import SimpleNamespace

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.db import connection
from django.http import parse_cookie

from .services import remember_server_loop


class ServerEventLoopMiddleware:
    """ASGI middleware noting the server's event loop, where pushes from sync code must run.

    The in-memory channel layer's queues belong to that loop; a push made on another loop
    would not wake the socket waiting on them.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        remember_server_loop(asyncio.get_running_loop())
        return await self.app(scope, receive, send)


# The notifications socket's handshake reads the database twice (the session, then the hello's
# summary). Channels' database_sync_to_async runs every call of every socket on asgiref's one
# thread-sensitive thread: the handshakes of a process queued there one round trip at a time
# (about 60 a second on a busy 2-core machine). These threads take a few at once. They are
# few, so that sockets opening in a crowd hold few of the pool's connections, leaving the rest
# to page requests; and each call hands its connection back at its end, so no thread keeps one
# between calls (nor past a test: the test database could not be dropped).
HANDSHAKE_THREADS = 4
_handshake_executor = ThreadPoolExecutor(max_workers=HANDSHAKE_THREADS, thread_name_prefix="socket-handshake")


def handshake_database_call(function):
    """Wrap `function` (sync, ORM) into a coroutine run on the handshake threads, as
    database_sync_to_async would run it on asgiref's single thread.
    """

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return database_sync_to_async(run, thread_sensitive=False, executor=_handshake_executor)


def session_user_id(session_key: str) -> int | None:
    """The id of the user a login session authenticates, or None (no session, expired, logged out,
    user deactivated, password changed since).

    Django's own get_user() decides, as for a request, on the session read fresh from the store.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    user = auth.get_user(SimpleNamespace(session=_ReadOnlySession(store.load())))
    return user.pk if user.is_authenticated else None


class _ReadOnlySession(dict):
    """Session data for auth.get_user() to read, and nothing more.

    On a stale password hash get_user() flushes the session, and on a match with a
    SECRET_KEY_FALLBACKS key it cycles the session key: both are for a request, which sends
    the browser its new cookie. A socket cannot, so here they do nothing; the browser's next
    request does them for real.
    """

    def flush(self):
        pass

    def cycle_key(self):
        pass


class SocketSessionMiddleware:
    """Authenticate the notifications socket from its session cookie, keeping only `user_id` and
    `session_key` in its scope; every other socket path goes through Channels' AuthMiddlewareStack.

    The notifications socket is open on every page, thousands per process: AuthMiddlewareStack
    would keep, for its whole life, the session store, the loaded User and a copy of the scope
    per layer, where it needs two numbers. One database call (session, then user) on the
    handshake threads; no cookie or no valid session: user_id None.
    """

    lean_paths = frozenset({"/ws/notifications/"})

    def __init__(self, app):
        from channels.auth import AuthMiddlewareStack

        self.app = app
        self.full = AuthMiddlewareStack(app)

    async def __call__(self, scope, receive, send):
        if scope.get("path") not in self.lean_paths:
            return await self.full(scope, receive, send)
        session_key = None
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                session_key = parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
                break
        user_id = await handshake_database_call(session_user_id)(session_key) if session_key else None
        scope = dict(scope, user_id=user_id, session_key=session_key if user_id is not None else None)
        return await self.app(scope, receive, send)

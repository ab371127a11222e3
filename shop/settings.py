"""Settings for the shop, read from the environment.

Every variable is optional in development: the embedded default is a SQLite file and
an in-memory channel layer, so `make run` needs no server. See .env.example.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean variable; accept the usual spellings, refuse anything else."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated list."""
    value = os.environ.get(name, "")
    return [item.strip() for item in value.split(",") if item.strip()] or default


def env_int(name: str, default: int, *, minimum: int = 1) -> int:
    """Read a whole number, `minimum` or more (a positive one unless told)."""
    value = os.environ.get(name, "")
    try:
        number = int(value) if value.strip() else default
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from error
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be {minimum} or more")
    return number


def env_seconds(name: str, default: float) -> float:
    """Read a positive number of seconds."""
    value = os.environ.get(name, "")
    try:
        seconds = float(value) if value.strip() else default
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, not {value!r}") from error
    if seconds <= 0:
        raise ImproperlyConfigured(f"{name} must be more than 0 seconds")
    return seconds


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is false")
    # A random key made on first run and kept out of git, so that sessions (and with them
    # the shoppers' sockets) survive a restart of the development server.
    dev_key_file = BASE_DIR / ".dev-secret-key"
    if not dev_key_file.exists():
        dev_key_file.write_text(secrets.token_urlsafe(50))
        dev_key_file.chmod(0o600)
    SECRET_KEY = dev_key_file.read_text().strip()

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    # Login rate limiting (failed attempts are rows in the database) and the Content Security Policy.
    "axes",
    "csp",
    "shop",
    "notifications",
]

# Every middleware here supports async, so async views (checkout, the inbox API) keep
# their event loop and no thread is held while the bank answers. shop.middleware holds
# Django's (and django-csp's) own, with the hooks that do no I/O run on the event loop
# instead of a thread hop each (shop/middleware.py says which and why). The security, CSRF
# and clickjacking middleware keep Django's names: `check --deploy` looks for those names,
# and without them skips its HTTPS, HSTS, cookie and framing checks.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Sets the Content-Security-Policy header on every page, error pages included.
    "shop.middleware.CSPMiddleware",
    "shop.middleware.SessionMiddleware",
    "shop.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "shop.middleware.AuthenticationMiddleware",
    "shop.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "shop.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "shop.context_processors.cart_summary",
                "notifications.context_processors.notification_summary",
            ],
        },
    },
]

ASGI_APPLICATION = "shop.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        # An empty DATABASE_URL counts as unset.
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Under ASGI every request runs in its own thread: persistent connections leak.
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Daphne serves requests concurrently: IMMEDIATE makes a writer wait for the lock
    # instead of failing with "database is locked" (a double-click on pay, for one).
    DATABASES["default"].setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
    # A file, not memory, so servers started by the browser tests see the test data.
    # One per test process: two suites running at once must not share a database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-output" / f"test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    if env_bool("DATABASE_POOL", False):
        # psycopg's pool, one per process. The checkout hands its connection back before it
        # awaits the bank, so a connection is held only for a transaction's few milliseconds:
        # a small pool serves hundreds of concurrent checkouts. Size it so that every
        # process's max_size together stays under PostgreSQL's max_connections (default 100,
        # a few kept for superusers). A request that finds the pool empty waits up to
        # `timeout` seconds, then fails rather than queue forever. Health checks make the pool
        # test each connection as it leaves the pool (psycopg's check_connection), so one
        # broken by a PostgreSQL restart is replaced instead of failing the request that got it.
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2),
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
            "timeout": env_seconds("DATABASE_POOL_TIMEOUT", 10.0),
        }
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    from urllib.parse import urlsplit

    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    # Pub/sub channels are shared by the whole Redis server, whatever the database number:
    # the prefix keeps deployments (and test runs) on one server apart, as the number used to.
    CHANNEL_LAYER_PREFIX = os.environ.get("CHANNEL_LAYER_PREFIX") or f"shop{urlsplit(REDIS_URL).path.strip('/') or 0}."

    CHANNEL_LAYERS = {
        "default": {
            # channels-redis's pub/sub layer (notifications/layers.py says why, and what it adds).
            "BACKEND": "notifications.layers.PubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 times reads out after 5 s by default: explicit timeouts, so a
                        # frozen Redis fails a command after 10 s instead of hanging it.
                        "socket_timeout": 10,
                        "socket_connect_timeout": 5,
                        # After a Redis restart every pooled connection is dead and its next
                        # command fails, the subscription connection too. Retry a command that
                        # fails on its connection on a fresh one (the subscription: reconnect and
                        # resubscribe), up to 5 times over about 3.4 s (0.2, 0.4, 0.8, 1, 1), and
                        # PING a connection idle for 15 s before using it. Past that the sockets
                        # are closed with 1013 and the clients reconnect when they can.
                        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), 5),
                        "health_check_interval": 15,
                        # redis-py's pool holds at most 100 connections per process and fails the
                        # next command at once (no waiting): 11 of 10,000 concurrent handshakes
                        # answered 500. Commands hold a connection for a round trip only, so this
                        # covers bursts of thousands of handshakes; Redis accepts 10,000 clients
                        # by default, enough for several daphne processes at this size.
                        "max_connections": 1000,
                    }
                ],
                # No capacity to overflow and no group expiry: a socket's subscriptions end with
                # it, a process's with its Redis connection.
                "prefix": CHANNEL_LAYER_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The axes backend comes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "shop.backends.RateLimitedLoginBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "shop:catalog"
LOGOUT_REDIRECT_URL = "shop:catalog"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic writes (and nginx reads); a relative path is taken from the project.
# Two deployments on one checkout (make prod-local and the topology test) each get their own.
STATIC_ROOT = BASE_DIR / (os.environ.get("DJANGO_STATIC_ROOT") or "staticfiles")
# Daphne serves /static/ itself when this is on (development, tests); behind a proxy in
# production, run collectstatic and let the proxy serve STATIC_ROOT instead.
SERVE_STATIC = env_bool("DJANGO_SERVE_STATIC", DEBUG)
# With the manifest storage, collectstatic writes each file also under a name carrying a
# hash of its content (shop.3f2a9c1b7e4d.css) and {% static %} links to that name, so the
# proxy can tell browsers to cache /static/ for a year: a changed file gets a new name.
# It needs collectstatic's manifest to render any page, so it is on only where collectstatic
# runs (DEBUG off); development and tests keep the plain storage.
STATIC_MANIFEST = env_bool("DJANGO_STATIC_MANIFEST", not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
            if STATIC_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Uploaded files (product photos and their renditions). Served by Django only in DEBUG
# (shop/urls.py); in production the proxy serves MEDIA_ROOT at MEDIA_URL (README: Product images).
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / (os.environ.get("DJANGO_MEDIA_ROOT") or "media")  # A relative path is taken from the project.

MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

EMAIL_BACKEND = os.environ.get("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "shop@example.com")
# The SMTP backend's server (Django's defaults: a local relay on localhost:25).
EMAIL_HOST = os.environ.get("DJANGO_EMAIL_HOST") or "localhost"
try:
    EMAIL_PORT = int(os.environ.get("DJANGO_EMAIL_PORT") or 25)
except ValueError as error:
    raise ImproperlyConfigured("DJANGO_EMAIL_PORT must be a port number") from error
# Django's SMTP backend waits forever by default: a mail server that accepts the connection
# and never answers would stall the task worker, and every task queued behind the email.
EMAIL_TIMEOUT = 10

# Background tasks: Django's Tasks API (on 5.2 the django-tasks backport) with its database
# backend. A task is a row in this database, written in the caller's transaction (so it
# commits or rolls back with the order that enqueued it) and kept through crashes, restarts
# and deploys until a worker runs it: `python manage.py db_worker` (`make worker`; `make run`
# starts one beside daphne). One backend for every task of the project.
INSTALLED_APPS += ["django_tasks", "django_tasks_db"]
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        # One queue, the one db_worker serves by default. Retries wait in the table (run_after),
        # not in the worker, so a failing mail server holds up no other task. A new queue needs
        # a worker that serves it (db_worker --queue-name).
        "QUEUES": ["default"],
    }
}

PAYMENT_GATEWAY = os.environ.get("PAYMENT_GATEWAY", "shop.payments.SandboxBank")
try:
    SANDBOX_BANK_LATENCY_MS = int(os.environ.get("SANDBOX_BANK_LATENCY_MS", "300"))
except ValueError as error:
    raise ImproperlyConfigured("SANDBOX_BANK_LATENCY_MS must be a whole number of milliseconds") from error

# The sandbox bank's ledger: a file shared by every process of this machine, so a retry that
# reaches another daphne process, or comes after a restart, gets the bank's first answer.
SANDBOX_BANK_LEDGER = os.environ.get("SANDBOX_BANK_LEDGER") or str(BASE_DIR / "sandbox-bank.sqlite3")


# How long the shopper waits for the bank. Past it the order stays PENDING, the shopper is
# told the payment is being confirmed, and the same bank call goes on in the background for
# as long again; whatever is still open then is settled by reconciliation.
PAYMENT_TIMEOUT = env_seconds("PAYMENT_TIMEOUT", 20.0)
# A PENDING order older than this is asked about at the bank by reconcile_payments (and by
# the follow-up task every checkout schedules).
PAYMENT_RECONCILE_AFTER = env_seconds("PAYMENT_RECONCILE_AFTER", 2 * PAYMENT_TIMEOUT + 10)
# How many checkouts of one process do their database work (reserve, capture, release) at
# once; the others queue for a turn, so a storm of checkouts cannot take every thread and
# the CPU from the rest of the site. The bank is awaited outside this bound.
CHECKOUT_CONCURRENCY = env_int("CHECKOUT_CONCURRENCY", 4)

SHOP_CURRENCY = "EUR"
SHOP_MAX_QUANTITY_PER_LINE = 20

# Upper bound on how long a push may take; past it the push is dropped and logged (the
# notification row stays, and the next connect replays it).
NOTIFICATIONS_DISPATCH_TIMEOUT = 2.0
# Upper bound on joining a socket's groups (handshake, heartbeat); past it, or if the layer
# fails, the socket is closed with 1013 (try again later) and the client backs off.
NOTIFICATIONS_SUBSCRIBE_TIMEOUT = 5.0
# A notification still unread this many minutes after it was written is emailed (to users who
# want that kind by email: notification preferences). Fractions are allowed (0.5: 30 s).
try:
    NOTIFICATIONS_EMAIL_AFTER_MINUTES = float(os.environ.get("NOTIFICATIONS_EMAIL_AFTER_MINUTES") or 30)
except ValueError as error:
    raise ImproperlyConfigured("NOTIFICATIONS_EMAIL_AFTER_MINUTES must be a number of minutes") from error
if not 0 <= NOTIFICATIONS_EMAIL_AFTER_MINUTES < 60 * 24 * 365:
    raise ImproperlyConfigured("NOTIFICATIONS_EMAIL_AFTER_MINUTES must be 0 or more (and under a year)")
# The shop's public address, for links in emails sent by the task worker (no request to read it from).
SHOP_SITE_URL = os.environ.get("SHOP_SITE_URL") or "http://127.0.0.1:8000"

TEST_RUNNER = "shop.test_runner.PytestTestRunner"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # One handler, on the root logger: configuring root replaces the handler daphne's command
    # line installs, so each line prints once, and app loggers simply propagate to it.
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "shop": {"level": "INFO"},
        "notifications": {"level": "INFO"},
        "daphne": {"level": "INFO"},
    },
}

# Security -----------------------------------------------------------------------------

# Cookies travel over HTTPS only in production. DJANGO_SECURE_COOKIES=false is for a
# production-like run on plain http://127.0.0.1 (make prod-local), never for a real site.
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)

# Behind a proxy that ends TLS, Django sees plain HTTP: trust the proxy's X-Forwarded-Proto
# only when told to, because a client reaching daphne directly could send the header itself.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
# The proxy's and the orchestrator's probes speak plain HTTP to daphne itself.
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a promise to browsers that is slow to take back: only on request. Without it
# `check --deploy` would warn (security.W021) on every deployment that sets HSTS.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
if SECURE_HSTS_SECONDS and not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# A failed CSRF check is nearly always a page left open across a login or logout: say so.
CSRF_FAILURE_VIEW = "shop.views.csrf_failure"


def _socket_sources(hosts: list[str]) -> list[str]:
    """ws:// and wss:// sources for the allowed hosts, for the notifications socket.

    CSP level 3 lets 'self' cover same-origin sockets, but older browsers (Safari before 15.4)
    need the host spelled out. IPv6 literals cannot be written in a CSP source: 'self' covers them.
    """
    sources = []
    for host in hosts:
        if host == "*" or host.startswith("["):
            continue
        pattern = f"*{host}" if host.startswith(".") else host
        sources += [f"ws://{pattern}:*", f"wss://{pattern}:*"]
    return sources


# Content Security Policy (django-csp 4): no inline script or style anywhere, in the shop or
# the admin; data comes to scripts in json_script blocks. A page that breaks under it gets its
# template fixed, not the policy widened.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", *_socket_sources(ALLOWED_HOSTS)],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

# Login rate limiting (django-axes) on the shop's login and the admin's. Failures are counted
# per username (from any address) and per client address (for any username); a login is
# refused while either has reached the limit, until the cool-off time has passed since its
# last failure (a failure during the lockout starts it again). A success does not wipe the
# count: otherwise an attacker would reset the address's count by logging in to an account of
# their own between guesses. Behind a proxy, run daphne with --proxy-headers (and let the
# proxy set X-Forwarded-For) so that the client address is the shopper's, not the proxy's.
AXES_FAILURE_LIMIT = env_int("DJANGO_LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("DJANGO_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "shop.views.login_locked_out"
AXES_HTTP_RESPONSE_CODE = 429

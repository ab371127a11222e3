"""/healthz (liveness) and /readyz (database and channel layer reachable, each within about a second).

The failures are real where that is cheap: a database whose address refuses connections, a
PostgreSQL that accepts the connection and never answers, a daphne whose Redis is not there.
The channel layer's other failures (pushes failing, pushes hanging, groups unreachable) come
from tests/fakes.py. No answer may carry the error's text: hosts, ports, users.
"""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

from shop import health
from tests.fakes import BrokenLayer, HangingLayer, UnreachableLayer, use_layer
from tests.live import free_port

# A body that names none of these gave nothing away.
LEAKS = ("127.0.0.1", "localhost", "6379", "5432", "postgres", "password", "Redis is down", "Traceback")


def assert_gives_nothing_away(body: str, *extra: str) -> None:
    for secret in LEAKS + extra:
        assert secret not in body, f"the answer shows {secret!r}: {body}"


def test_healthz_answers_ok_without_touching_the_database(client):
    # No `db` fixture: pytest-django fails any query, so a 200 here proves none ran.
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_readyz_is_ok_when_the_database_and_the_channel_layer_answer(client, db, in_memory_layer):
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}}
    assert response["Cache-Control"] == "no-store"


def test_readyz_leaves_no_group_behind_in_the_channel_layer(client, db, settings, in_memory_layer):
    from channels.layers import get_channel_layer

    response = client.get("/readyz")

    assert response.status_code == 200
    assert get_channel_layer().groups == {}


def test_readyz_is_503_naming_the_channel_layer_when_pushes_fail(client, db, settings):
    use_layer(settings, BrokenLayer)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "ok", "channel_layer": "error"}}
    assert_gives_nothing_away(response.content.decode())


def test_readyz_gives_no_host_when_the_channel_layer_is_unreachable(client, db, settings):
    use_layer(settings, UnreachableLayer)  # Its error reads "Error 111 connecting to 127.0.0.1:6379".

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "error"}
    assert_gives_nothing_away(response.content.decode(), "Error 111")


def test_readyz_answers_within_about_a_second_when_the_channel_layer_hangs(client, db, settings):
    use_layer(settings, HangingLayer)

    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "timeout"}
    print(f"readyz with a hanging channel layer answered in {elapsed:.2f} s (limit {health.READY_CHECK_TIMEOUT} s)")
    assert elapsed < 10 * health.READY_CHECK_TIMEOUT  # Loose: a hang would be 3600 s.


@pytest.fixture
def unreachable_database(db, monkeypatch):
    """Point new connections of the default database where none can be made (SQLite or PostgreSQL).

    The test's own connection is open already and keeps working; the readiness check opens a
    fresh one in its own thread, from these settings.
    """
    settings_dict = connections.settings[DEFAULT_DB_ALIAS]
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        monkeypatch.setitem(settings_dict, "NAME", "/nonexistent-directory/shop.sqlite3")
    else:
        monkeypatch.setitem(settings_dict, "HOST", "127.0.0.1")
        monkeypatch.setitem(settings_dict, "PORT", str(free_port()))  # Nothing listens there.
        monkeypatch.setitem(settings_dict, "PASSWORD", "password-that-must-not-show")
    return settings_dict


def test_readyz_is_503_naming_the_database_when_it_refuses_connections(client, unreachable_database, in_memory_layer):
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "error", "channel_layer": "ok"}}
    assert_gives_nothing_away(response.content.decode(), "nonexistent-directory", "password-that-must-not-show")


def test_healthz_stays_ok_while_the_database_is_unreachable(client, unreachable_database):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
def silent_postgres(db, monkeypatch):
    """A PostgreSQL address that accepts connections and never answers (a hung server).

    Closing the listener at teardown resets the connections, which frees the check's thread.
    """
    settings_dict = connections.settings[DEFAULT_DB_ALIAS]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # The kernel completes handshakes; nobody ever reads or answers.
    monkeypatch.setitem(settings_dict, "HOST", "127.0.0.1")
    monkeypatch.setitem(settings_dict, "PORT", str(listener.getsockname()[1]))
    yield
    listener.close()


@pytest.mark.postgres
def test_readyz_answers_within_about_a_second_when_postgresql_hangs(client, silent_postgres, in_memory_layer):
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "timeout", "channel_layer": "ok"}
    print(f"readyz with a silent PostgreSQL answered in {elapsed:.2f} s (limit {health.READY_CHECK_TIMEOUT} s)")
    assert elapsed < 10 * health.READY_CHECK_TIMEOUT


def get_json(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
            return response.status, json.loads(body), body
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        return error.code, json.loads(body), body


def test_a_daphne_whose_redis_is_gone_is_live_but_not_ready(live_daphne):
    # channels-redis for real, at an address where no Redis listens.
    server = live_daphne(redis_url=f"redis://127.0.0.1:{free_port()}/0")

    live_status, live, _ = get_json(f"{server.url}/healthz")
    ready_status, ready, body = get_json(f"{server.url}/readyz")

    assert (live_status, live) == (200, {"status": "ok"})
    assert ready_status == 503
    assert ready["checks"]["database"] == "ok"
    assert ready["checks"]["channel_layer"] in {"error", "timeout"}
    assert_gives_nothing_away(body, str(server.port))


@pytest.mark.redis
def test_a_daphne_on_redis_is_ready(live_daphne):
    import os

    server = live_daphne(redis_url=os.environ["REDIS_URL"])

    status, ready, _ = get_json(f"{server.url}/readyz")

    assert (status, ready) == (200, {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}})

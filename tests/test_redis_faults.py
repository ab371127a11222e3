"""The channel layer when Redis fails: restarted, paused, down, or its connection pool exhausted.

The first tests use stand-in layers (tests/fakes.py) and need no Redis. The rest start a
redis-server of their own on a free port of 127.0.0.1 (never the shared one), and restart it,
pause it (SIGSTOP/SIGCONT) or stop it by PID, with the project's own layer options from
settings.py pointed at it. They print what they measured.

Promises checked:
- a Redis restart loses no push (a dead pooled connection is retried on a fresh one), and an
  open socket lives through it;
- a push lost while the socket stays open (Redis paused for less than its socket timeout) is
  repaired: the next pong's last_seq is ahead of what the client has, and it resumes;
- a handshake while Redis is down (or the pool is exhausted) is accepted and closed with 4013
  (try again later) and one log line, never a 500 with a traceback; an open socket whose layer
  fails for longer than the retries is closed the same way.
"""

import asyncio
import json
import time
from copy import deepcopy

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client

from notifications import services
from notifications.consumers import CLOSE_TRY_AGAIN_LATER
from notifications.models import Notification
from shop.asgi import application
from tests.fakes import FailingReceiveLayer, UnreachableLayer, use_layer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_worker_thread_connections")]


def log_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def notify_in_transaction(user, title: str) -> Notification:
    with transaction.atomic():
        return services.notify(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title, url="/orders/")


async def connect(client: Client) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        "/ws/notifications/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ],
    )
    await communicator.connect(timeout=10)
    return communicator


def layer_warnings(caplog) -> list:
    return [record for record in caplog.records if record.name == "notifications.consumers"]


# Stand-in layers: no Redis needed -----------------------------------------------------------


async def test_handshake_while_the_layer_is_down_is_closed_with_try_again_later_and_one_log_line(
    shopper, settings, caplog
):
    use_layer(settings, UnreachableLayer)
    client = await sync_to_async(log_in)(shopper)

    communicator = await connect(client)  # before: the connect() raised, daphne answered 500

    assert await communicator.receive_output() == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}
    [line] = layer_warnings(caplog)
    assert str(CLOSE_TRY_AGAIN_LATER) in line.getMessage() and line.exc_info is None
    await communicator.disconnect()


async def test_open_socket_whose_layer_fails_is_closed_with_try_again_later_not_a_traceback(shopper, settings, caplog):
    layer = use_layer(settings, FailingReceiveLayer)
    client = await sync_to_async(log_in)(shopper)
    communicator = await connect(client)
    assert (await communicator.receive_json_from())["type"] == "hello"

    layer.broken = True

    # Before: the consumer died with the layer's exception (daphne: 1011 and a traceback).
    assert await communicator.receive_output() == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}
    [line] = layer_warnings(caplog)
    assert line.exc_info is None
    await communicator.disconnect()


# A redis-server of the test's own (tests/faults.py: own_redis) -----------------------------------


@pytest.fixture
def layer_on_own_redis(own_redis, settings):
    """The project's layer options (settings.py), pointed at a Redis of this test's own."""
    project = django_settings.CHANNEL_LAYERS["default"]
    if project["BACKEND"] == "channels.layers.InMemoryChannelLayer":
        pytest.fail("REDIS_URL is set but settings.py did not configure channels-redis")
    config = deepcopy(project["CONFIG"])
    config["hosts"] = [{**config["hosts"][0], "address": own_redis.url()}]
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": project["BACKEND"], "CONFIG": config}}
    return own_redis


async def receive_frames(communicator, *, quiet: float = 0.3) -> list[dict]:
    """Every frame until `quiet` seconds pass without one; a close appears as {"type": "close"}."""
    frames = []
    while not await communicator.receive_nothing(timeout=quiet):
        output = await communicator.receive_output()
        if output["type"] == "websocket.close":
            frames.append({"type": "close", "code": output["code"]})
            break
        frames.append(json.loads(output["text"]))
    return frames


async def open_socket(client: Client) -> WebsocketCommunicator:
    communicator = await connect(client)
    hello = await communicator.receive_json_from(timeout=5)
    assert hello["type"] == "hello"
    communicator.last_seq = hello["last_seq"]
    return communicator


async def ping_and_repair(communicator) -> list[dict]:
    """Act as the browser client: a pong ahead of what we have means a gap; resume from our last seq."""
    await communicator.send_json_to({"type": "ping"})
    pong = await communicator.receive_json_from(timeout=5)
    assert pong["type"] == "pong"
    if pong["last_seq"] <= communicator.last_seq:
        return []
    await communicator.send_json_to({"type": "resume", "after_seq": communicator.last_seq})
    frames = await receive_frames(communicator)
    assert frames[-1]["type"] == "replayed"
    communicator.last_seq = frames[-1]["last_seq"]
    return [frame for frame in frames if frame["type"] == "notification"]


def notification_ids(frames: list[dict]) -> list[int]:
    return [frame["id"] for frame in frames if frame["type"] == "notification"]


async def close_all(*communicators):
    await asyncio.gather(*(communicator.disconnect(timeout=1) for communicator in communicators))
    await get_channel_layer().close_pools()


@pytest.mark.redis
@pytest.mark.fault
async def test_pushes_after_each_restart_of_a_redis_that_keeps_its_data_reach_the_open_socket(
    layer_on_own_redis, shopper
):
    """Redis restarted with its data (groups included): only the pooled connections are dead.

    Before: the first command on each dead connection failed, so the push after a restart was
    lost, and the socket's own blocking read died with it (closed with 1011 and a traceback).
    """
    socket = await open_socket(await sync_to_async(log_in)(shopper))
    sent, delivered, closes = [], [], []

    for round_number in range(3):
        redis.Redis.from_url(layer_on_own_redis.url()).save()  # what a Redis with persistence keeps
        await sync_to_async(layer_on_own_redis.restart)()
        notification = await sync_to_async(notify_in_transaction)(shopper, f"After restart {round_number}")
        sent.append(notification.pk)
        frames = await receive_frames(socket, quiet=1.0)
        delivered += notification_ids(frames)
        closes += [frame for frame in frames if frame["type"] == "close"]

    lost = [pk for pk in sent if pk not in delivered]
    print(f"\n[redis restart, data kept] pushes sent {len(sent)}, delivered live {len(delivered)}, lost {len(lost)}")
    assert not closes, f"the socket was closed: {closes}"
    assert not lost, "a push after a Redis restart was lost"
    await socket.send_json_to({"type": "ping"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "pong"
    await close_all(socket)


@pytest.mark.redis
@pytest.mark.fault
async def test_after_a_restart_that_lost_redis_data_the_next_heartbeat_repairs_the_missed_pushes(
    layer_on_own_redis, shopper
):
    """Redis restarted empty (no persistence): the socket's group membership is gone, so pushes
    reach nobody until the next heartbeat renews it; that heartbeat's last_seq shows the gap."""
    socket = await open_socket(await sync_to_async(log_in)(shopper))

    await sync_to_async(layer_on_own_redis.restart)()
    sent = [(await sync_to_async(notify_in_transaction)(shopper, f"While forgotten {n}")).pk for n in range(3)]
    delivered = notification_ids(await receive_frames(socket, quiet=1.0))
    recovered = notification_ids(await ping_and_repair(socket))
    after = await sync_to_async(notify_in_transaction)(shopper, "After the heartbeat")
    live_again = notification_ids(await receive_frames(socket, quiet=1.0))

    lost = [pk for pk in sent if pk not in delivered]
    print(
        f"\n[redis restart, data lost] pushes sent {len(sent)}, delivered live {len(delivered)}, "
        f"lost {len(lost)}, recovered by the heartbeat's gap check {len([pk for pk in lost if pk in recovered])}"
    )
    assert set(delivered) | set(recovered) == set(sent)
    assert live_again == [after.pk], "the heartbeat did not renew the group membership"
    await close_all(socket)


@pytest.mark.redis
@pytest.mark.fault
async def test_pushes_lost_while_redis_is_paused_are_repaired_by_the_gap_check(layer_on_own_redis, shopper, settings):
    """Redis frozen for less than the socket timeout: the socket stays open, the pushes time out."""
    settings.NOTIFICATIONS_DISPATCH_TIMEOUT = 0.5  # three pushes in 1.5 s, well under socket_timeout
    socket = await open_socket(await sync_to_async(log_in)(shopper))

    layer_on_own_redis.pause()
    try:
        sent = [(await sync_to_async(notify_in_transaction)(shopper, f"While paused {n}")).pk for n in range(3)]
        await asyncio.sleep(1.0)  # past the dispatch timeout: the pushes are abandoned
    finally:
        layer_on_own_redis.resume()
    frames = await receive_frames(socket, quiet=1.0)
    delivered = notification_ids(frames)
    recovered = notification_ids(await ping_and_repair(socket))

    lost = [pk for pk in sent if pk not in delivered]
    print(
        f"\n[redis paused] pushes sent {len(sent)}, delivered live {len(delivered)}, lost {len(lost)}, "
        f"recovered by the gap check {len([pk for pk in lost if pk in recovered])}"
    )
    assert {"type": "close", "code": 1011} not in frames
    assert set(delivered) | set(recovered) == set(sent)
    await close_all(socket)


@pytest.mark.redis
@pytest.mark.fault
async def test_handshake_while_redis_is_down_is_closed_with_try_again_later_then_works_when_redis_is_back(
    layer_on_own_redis, shopper, caplog
):
    client = await sync_to_async(log_in)(shopper)
    layer_on_own_redis.stop()

    refused = await connect(client)
    output = await refused.receive_output(timeout=10)

    layer_on_own_redis.start()
    socket = await open_socket(client)
    print(f"\n[redis down] handshake answered {output}; after restart: hello")
    assert output == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}
    warnings = layer_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].exc_info is None
    await close_all(refused, socket)


@pytest.mark.redis
@pytest.mark.fault
async def test_an_outage_longer_than_the_retries_closes_the_open_socket_with_try_again_later(
    layer_on_own_redis, shopper, caplog
):
    socket = await open_socket(await sync_to_async(log_in)(shopper))

    layer_on_own_redis.stop()
    started = time.monotonic()
    output = await socket.receive_output(timeout=30)
    waited = time.monotonic() - started
    layer_on_own_redis.start()

    print(f"\n[redis down] open socket closed after {waited:.1f} s with {output}")
    assert output == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}
    assert all(record.exc_info is None for record in caplog.records)
    await close_all(socket)


@pytest.mark.redis
@pytest.mark.fault
async def test_an_exhausted_connection_pool_closes_handshakes_with_try_again_later_never_an_error(
    layer_on_own_redis, shopper, settings
):
    """A pool far too small for the burst: the handshakes it cannot serve are told to come back."""
    assert django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["max_connections"] >= 1000
    config = deepcopy(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["hosts"][0]["max_connections"] = 3
    settings.CHANNEL_LAYERS = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": config}}
    client = await sync_to_async(log_in)(shopper)

    sockets = await asyncio.gather(*(connect(client) for _ in range(40)))
    first_outputs = await asyncio.gather(*(socket.receive_output(timeout=10) for socket in sockets))

    answered = {
        "hello": sum(1 for output in first_outputs if '"hello"' in output.get("text", "")),
        "try again later": sum(1 for output in first_outputs if output.get("code") == CLOSE_TRY_AGAIN_LATER),
    }
    print(f"\n[pool of 3] 40 concurrent handshakes: {answered}")
    assert answered["hello"] + answered["try again later"] == 40
    assert answered["hello"] >= 1
    await close_all(*sockets)

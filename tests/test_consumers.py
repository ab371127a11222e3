"""The notifications socket, driven through the real ASGI application (origin check, session auth).

Every test gets a fresh in-memory channel layer; sockets authenticate with a real session
cookie made by logging in with Django's test client.
"""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client

from notifications import services
from notifications.models import Notification
from shop.asgi import application

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer"),
]

SOCKET_PATH = "/ws/notifications/"
OUR_ORIGIN = b"http://127.0.0.1"


def log_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_notifications(user, count, *, read=False) -> list[int]:
    """Write `count` notifications for `user` directly, as earlier order changes would have."""
    ids = []
    for _ in range(count):
        notification = Notification.objects.create(
            recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=f"For {user.username}", body="b", url="/orders/"
        )
        if read:
            Notification.objects.filter(pk=notification.pk).update(read_at=notification.created_at)
        ids.append(notification.pk)
    return ids


def notify_in_transaction(user, title):
    with transaction.atomic():
        return services.notify(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title, url="/orders/")


@pytest.fixture
async def open_socket():
    """Open sockets through the ASGI application; all are disconnected after the test."""
    opened = []

    async def open_(client: Client | None = None, *, query: str = "", origin: bytes = OUR_ORIGIN, expect_hello=True):
        headers = [(b"origin", origin)]
        if client is not None:
            headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
        communicator = WebsocketCommunicator(application, SOCKET_PATH + query, headers=headers)
        opened.append(communicator)
        connected, _ = await communicator.connect()
        if expect_hello:
            assert connected
            communicator.hello = await communicator.receive_json_from()
            assert communicator.hello["type"] == "hello"
        communicator.connected = connected
        return communicator

    yield open_
    for communicator in opened:
        await communicator.disconnect()


@pytest.fixture
async def alice_client(shopper):
    return await sync_to_async(log_in)(shopper)


async def receive_frames(communicator, count: int) -> list[dict]:
    """`count` frames, then nothing more. A replay by id has no end marker: waiting for a quiet
    0.1 s instead, the tests saw no frame at all on a loaded machine.
    """
    frames = [await communicator.receive_json_from(timeout=5) for _ in range(count)]
    assert await communicator.receive_nothing(timeout=0.1)
    return frames


async def assert_answers_ping(communicator):
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from())["type"] == "pong"


# Handshake ---------------------------------------------------------------------------


async def test_notifications_socket_keeps_ids_not_the_session_and_user_objects(shopper, alice_client):
    """Thousands of sockets per process: each keeps two numbers, not a SessionStore and a User (issue 8).

    Before: Channels' AuthMiddlewareStack left the loaded session, the User and a scope copy per
    layer in every socket for its whole life.
    """
    from notifications.middleware import SocketSessionMiddleware

    seen = {}

    async def consumer(scope, receive, send):
        seen.update(scope)

    session_key = alice_client.cookies["sessionid"].value
    scope = {"type": "websocket", "path": SOCKET_PATH, "headers": [(b"cookie", f"sessionid={session_key}".encode())]}
    await SocketSessionMiddleware(consumer)(scope, None, None)

    assert (seen["user_id"], seen["session_key"]) == (shopper.pk, session_key)
    assert "user" not in seen and "session" not in seen and "cookies" not in seen


async def test_anonymous_socket_is_closed_with_4401_and_joins_no_group(open_socket):
    communicator = await open_socket(expect_hello=False)

    assert communicator.connected
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4401}
    assert get_channel_layer().groups == {}


async def test_socket_from_another_origin_is_refused_even_with_a_session(open_socket, alice_client):
    communicator = await open_socket(alice_client, origin=b"http://evil.example", expect_hello=False)

    assert not communicator.connected
    assert get_channel_layer().groups == {}


async def test_hello_gives_the_unread_count_and_newest_id_of_the_user(
    open_socket, shopper, other_shopper, alice_client
):
    await sync_to_async(make_notifications)(shopper, 2, read=True)
    mine = await sync_to_async(make_notifications)(shopper, 3)
    await sync_to_async(make_notifications)(other_shopper, 4)  # newer ids, not hers

    communicator = await open_socket(alice_client)

    assert communicator.hello == {"type": "hello", "unread": 3, "last_id": mine[-1], "last_seq": 5}
    assert await communicator.receive_nothing()


async def test_hello_of_a_user_without_notifications_has_last_id_zero(open_socket, other_shopper, alice_client):
    await sync_to_async(make_notifications)(other_shopper, 2)

    communicator = await open_socket(alice_client)

    assert communicator.hello == {"type": "hello", "unread": 0, "last_id": 0, "last_seq": 0}


# Replay ------------------------------------------------------------------------------


async def interleaved_notifications(alice, bob) -> list[int]:
    alice_ids = []
    for _ in range(4):
        alice_ids += await sync_to_async(make_notifications)(alice, 1)
        await sync_to_async(make_notifications)(bob, 1)
    return alice_ids


async def test_after_in_url_replays_newer_notifications_of_the_user_in_id_order(
    open_socket, shopper, other_shopper, alice_client
):
    ids = await interleaved_notifications(shopper, other_shopper)

    communicator = await open_socket(alice_client, query=f"?after={ids[1]}")

    frames = await receive_frames(communicator, len(ids[2:]))
    assert [frame["id"] for frame in frames] == ids[2:]
    first = await Notification.objects.aget(pk=ids[2])
    assert frames[0] == {
        "type": "notification",
        "id": first.pk,
        "seq": first.seq,
        "kind": "order_shipped",
        "title": "For alice",
        "body": "b",
        "url": "/orders/",
        "created_at": first.created_at.isoformat(),
        "read": False,
    }


async def test_resume_message_replays_newer_notifications_of_the_user_in_id_order(
    open_socket, shopper, other_shopper, alice_client
):
    ids = await interleaved_notifications(shopper, other_shopper)
    communicator = await open_socket(alice_client)
    assert await communicator.receive_nothing()

    await communicator.send_json_to({"type": "resume", "after": ids[0]})

    frames = await receive_frames(communicator, len(ids[1:]))
    assert [frame["id"] for frame in frames] == ids[1:]
    assert {frame["title"] for frame in frames} == {"For alice"}


async def test_resume_after_zero_replays_everything_of_the_user(open_socket, shopper, other_shopper, alice_client):
    ids = await interleaved_notifications(shopper, other_shopper)

    communicator = await open_socket(alice_client, query="?after=0")

    assert [frame["id"] for frame in await receive_frames(communicator, len(ids))] == ids


# Client messages ---------------------------------------------------------------------


async def test_ping_gets_pong(open_socket, alice_client):
    communicator = await open_socket(alice_client)

    await assert_answers_ping(communicator)


async def test_ack_records_delivery(open_socket, shopper, alice_client):
    [first, second] = await sync_to_async(make_notifications)(shopper, 2)
    communicator = await open_socket(alice_client)

    await communicator.send_json_to({"type": "ack", "id": first})
    await assert_answers_ping(communicator)  # messages are handled in order: the ack is done

    assert await Notification.objects.filter(pk=first, delivered_at__isnull=False).aexists()
    assert await Notification.objects.filter(pk=second, delivered_at__isnull=True).aexists()


async def test_read_marks_it_read_and_tells_every_tab_the_new_count(open_socket, shopper, alice_client):
    ids = await sync_to_async(make_notifications)(shopper, 3)
    first_tab = await open_socket(alice_client)
    second_tab = await open_socket(alice_client)

    await first_tab.send_json_to({"type": "read", "id": ids[0]})

    assert await first_tab.receive_json_from() == {"type": "unread", "count": 2}
    assert await second_tab.receive_json_from() == {"type": "unread", "count": 2}
    assert [pk async for pk in Notification.objects.filter(read_at__isnull=False).values_list("pk", flat=True)] == [
        ids[0]
    ]


async def test_read_all_marks_everything_read_and_tells_every_tab(open_socket, shopper, other_shopper, alice_client):
    await sync_to_async(make_notifications)(shopper, 3)
    [bobs] = await sync_to_async(make_notifications)(other_shopper, 1)
    first_tab = await open_socket(alice_client)
    second_tab = await open_socket(alice_client)

    await first_tab.send_json_to({"type": "read_all"})

    assert await first_tab.receive_json_from() == {"type": "unread", "count": 0}
    assert await second_tab.receive_json_from() == {"type": "unread", "count": 0}
    assert not await Notification.objects.filter(recipient=shopper, read_at__isnull=True).aexists()
    assert await Notification.objects.filter(pk=bobs, read_at__isnull=True).aexists()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param("{not json", "bad_json", id="malformed-json"),
        pytest.param("[1, 2]", "bad_message", id="json-list"),
        pytest.param('"ping"', "bad_message", id="json-string"),
        pytest.param('{"type": "dance"}', "unknown_type", id="unknown-type"),
        pytest.param('{"no": "type"}', "unknown_type", id="missing-type"),
        pytest.param('{"type": "read"}', "bad_id", id="read-without-id"),
        pytest.param('{"type": "read", "id": "seven"}', "bad_id", id="read-word-id"),
        pytest.param('{"type": "ack", "id": 1.5}', "bad_id", id="ack-float-id"),
        pytest.param('{"type": "ack", "id": true}', "bad_id", id="ack-boolean-id"),
        pytest.param('{"type": "read", "id": -3}', "bad_id", id="read-negative-id"),
        pytest.param('{"type": "read", "id": "\u00b2"}', "bad_id", id="read-superscript-digit"),
        pytest.param('{"type": "read", "id": 99999999999999999999999}', "bad_id", id="read-id-past-bigint"),
        pytest.param('{"type": "resume", "after": "x"}', "bad_id", id="resume-word-after"),
        pytest.param('{"type": "ping", "pad": "' + "x" * 4100 + '"}', "too_large", id="too-large"),
    ],
)
async def test_bad_frame_gets_an_error_and_the_socket_stays_usable(frame, code, open_socket, alice_client):
    communicator = await open_socket(alice_client)

    await communicator.send_to(text_data=frame)

    error = await communicator.receive_json_from()
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"]
    await assert_answers_ping(communicator)


async def test_binary_frame_gets_bad_frame_and_the_socket_stays_usable(open_socket, alice_client):
    communicator = await open_socket(alice_client)

    await communicator.send_to(bytes_data=b'{"type": "ping"}')

    assert (await communicator.receive_json_from())["code"] == "bad_frame"
    await assert_answers_ping(communicator)


@pytest.mark.parametrize("message_type", ["read", "ack"])
async def test_another_users_notification_is_not_found_and_stays_unchanged(
    message_type, open_socket, other_shopper, alice_client
):
    [bobs] = await sync_to_async(make_notifications)(other_shopper, 1)
    communicator = await open_socket(alice_client)

    await communicator.send_json_to({"type": message_type, "id": bobs})

    error = await communicator.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "not_found")
    bobs_row = await Notification.objects.aget(pk=bobs)
    assert (bobs_row.read_at, bobs_row.delivered_at) == (None, None)
    await assert_answers_ping(communicator)


async def test_flood_is_rate_limited_and_the_socket_recovers(open_socket, alice_client):
    communicator = await open_socket(alice_client)

    for _ in range(40):
        await communicator.send_to(text_data=json.dumps({"type": "ping"}))
    answers = [await communicator.receive_json_from() for _ in range(40)]

    refused = [answer for answer in answers if answer.get("code") == "rate_limited"]
    assert refused, "40 messages at once must exceed the burst of 30"
    assert len(refused) + sum(1 for answer in answers if answer["type"] == "pong") == 40
    await asyncio.sleep(0.3)  # the bucket refills at 10 tokens a second
    await assert_answers_ping(communicator)


async def test_client_that_keeps_flooding_is_closed_with_4429(open_socket, alice_client):
    communicator = await open_socket(alice_client)

    for _ in range(200):
        await communicator.send_to(text_data='{"type": "ping"}')
    outputs = []
    while (output := await communicator.receive_output())["type"] != "websocket.close":
        outputs.append(json.loads(output["text"]))

    assert output == {"type": "websocket.close", "code": 4429}
    assert sum(1 for frame in outputs if frame.get("code") == "rate_limited") == 100


# Live pushes -------------------------------------------------------------------------


async def test_live_notify_reaches_the_open_socket_after_commit(open_socket, shopper, alice_client):
    communicator = await open_socket(alice_client)

    notification = await sync_to_async(notify_in_transaction)(shopper, "Order X has shipped")

    frame = await communicator.receive_json_from()
    assert frame["type"] == "notification"
    assert (frame["id"], frame["title"], frame["read"]) == (notification.pk, "Order X has shipped", False)
    assert await communicator.receive_json_from() == {"type": "unread", "count": 1}


async def test_a_push_reaches_the_socket_without_a_thread_hop(open_socket, shopper, alice_client, monkeypatch):
    """Layer events skip Channels' connection-closing hop to a thread (issue 8).

    Before: every pushed message first waited for close_old_connections in a worker thread,
    which also closed the connection the next push's count query then had to reopen.
    """
    communicator = await open_socket(alice_client)
    hops = []

    async def counting_close_old_connections():
        hops.append(1)

    monkeypatch.setattr("channels.consumer.aclose_old_connections", counting_close_old_connections)

    await get_channel_layer().group_send(
        services.user_group(shopper.pk),
        {"type": "notification.message", "notification": {"type": "notification", "id": 1}, "unread": 3},
    )

    assert (await communicator.receive_json_from())["id"] == 1
    assert await communicator.receive_json_from() == {"type": "unread", "count": 3}
    assert hops == []


async def test_anotify_reaches_every_tab_of_the_user(open_socket, shopper, alice_client):
    first_tab = await open_socket(alice_client)
    second_tab = await open_socket(alice_client)

    notification = await services.anotify(recipient=shopper, kind=Notification.Kind.ORDER_SHIPPED, title="Shipped")

    for tab in (first_tab, second_tab):
        assert (await tab.receive_json_from())["id"] == notification.pk
        assert await tab.receive_json_from() == {"type": "unread", "count": 1}


async def test_a_user_never_receives_another_users_notification(open_socket, other_shopper, alice_client):
    bob_client = await sync_to_async(log_in)(other_shopper)
    alice_socket = await open_socket(alice_client)
    bob_socket = await open_socket(bob_client)

    notification = await sync_to_async(notify_in_transaction)(other_shopper, "For Bob only")

    assert (await bob_socket.receive_json_from())["id"] == notification.pk
    assert await bob_socket.receive_json_from() == {"type": "unread", "count": 1}
    assert await alice_socket.receive_nothing()


# Logout ------------------------------------------------------------------------------


async def test_logout_closes_that_sessions_socket_only(open_socket, shopper, alice_client):
    other_device = await sync_to_async(log_in)(shopper)
    leaving = await open_socket(alice_client)
    staying = await open_socket(other_device)

    response = await sync_to_async(alice_client.post)("/accounts/logout/")

    assert response.status_code == 302
    assert await leaving.receive_output() == {"type": "websocket.close", "code": 4401}
    assert await staying.receive_nothing()
    await assert_answers_ping(staying)


async def test_close_session_sockets_closes_the_sockets_of_that_session(open_socket, alice_client):
    first_tab = await open_socket(alice_client)
    second_tab = await open_socket(alice_client)

    services.close_session_sockets(alice_client.cookies["sessionid"].value)

    assert await first_tab.receive_output() == {"type": "websocket.close", "code": 4401}
    assert await second_tab.receive_output() == {"type": "websocket.close", "code": 4401}

"""Bad input never crashes the notifications socket or the read API: each gets its documented error.

Before, a frame whose `type` was an object or a list raised TypeError (unhashable) inside the
consumer, and JSON nested a few thousand levels deep (well under the 4096-character limit)
raised RecursionError: the socket was closed with 1011 and a traceback logged. The read form
with `next=foo` saved the read and then answered 500 (redirect() took "foo" for a URL name).
"""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from notifications.consumers import MAX_FRAME_CHARS
from notifications.models import Notification
from shop.asgi import application

DEEP_LIST = "[" * 2000 + "]" * 2000
DEEP_IN_A_PING = '{"type": "ping", "pad": ' + "[" * 2000 + "]" * 2000 + "}"
UNCLOSED = "[" * 3000


def log_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
async def alice_socket(shopper):
    client = await sync_to_async(log_in)(shopper)
    communicator = WebsocketCommunicator(
        application,
        "/ws/notifications/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ],
    )
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from())["type"] == "hello"
    yield communicator
    await communicator.disconnect()


def test_the_deeply_nested_frames_fit_under_the_size_limit():
    for frame in (DEEP_LIST, DEEP_IN_A_PING, UNCLOSED):
        assert len(frame) <= MAX_FRAME_CHARS


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param('{"type": {}}', "unknown_type", id="type-is-an-object"),
        pytest.param('{"type": []}', "unknown_type", id="type-is-a-list"),
        pytest.param('{"type": ["ping"]}', "unknown_type", id="type-is-a-list-of-a-known-type"),
        pytest.param('{"type": 7}', "unknown_type", id="type-is-a-number"),
        pytest.param('{"type": null}', "unknown_type", id="type-is-null"),
        pytest.param(DEEP_LIST, "bad_json", id="list-nested-2000-deep"),
        pytest.param(DEEP_IN_A_PING, "bad_json", id="ping-with-a-list-nested-2000-deep"),
        pytest.param(UNCLOSED, "bad_json", id="3000-unclosed-brackets"),
        pytest.param('{"type": "read", "id": {}}', "bad_id", id="id-is-an-object"),
        pytest.param('{"type": "resume", "after": []}', "bad_id", id="after-is-a-list"),
        pytest.param('{"type": "resume", "after_seq": {"n": 1}}', "bad_id", id="after-seq-is-an-object"),
    ],
)
async def test_bad_frame_gets_its_error_frame_and_the_socket_stays_open(frame, code, alice_socket, caplog):
    await alice_socket.send_to(text_data=frame)

    error = await alice_socket.receive_json_from()
    assert (error["type"], error["code"]) == ("error", code)
    assert error["detail"]
    await alice_socket.send_json_to({"type": "ping"})
    assert (await alice_socket.receive_json_from())["type"] == "pong"
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


# POST /notifications/api/read/ ---------------------------------------------------------------


@pytest.fixture
def alice(client, shopper):
    client.force_login(shopper)
    return client


def make_notification(user) -> Notification:
    return Notification.objects.create(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title="Shipped")


@pytest.mark.django_db
@pytest.mark.usefixtures("in_memory_layer")
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DEEP_LIST, id="list-nested-2000-deep"),
        pytest.param("[" * 100_000, id="100000-unclosed-brackets"),
        pytest.param('{"id": ' + "[" * 5000 + "1" + "]" * 5000 + "}", id="id-nested-5000-deep"),
    ],
)
def test_read_api_with_deeply_nested_json_is_a_400_bad_json(alice, body):
    response = alice.post("/notifications/api/read/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_json"


@pytest.mark.django_db
@pytest.mark.usefixtures("in_memory_layer")
@pytest.mark.parametrize(
    "next_value",
    ["foo", "notifications:inbox", "logout", "javascript:alert(1)", "//evil.example/", "https://evil.example/", ""],
)
def test_read_form_with_a_next_that_is_not_a_local_path_marks_read_and_goes_to_the_inbox(alice, shopper, next_value):
    notification = make_notification(shopper)

    response = alice.post("/notifications/api/read/", {"id": notification.pk, "next": next_value})

    assert response.status_code == 302
    assert response.url == "/notifications/"
    notification.refresh_from_db()
    assert notification.is_read


@pytest.mark.django_db
@pytest.mark.usefixtures("in_memory_layer")
def test_read_form_with_a_local_next_goes_back_there(alice, shopper):
    notification = make_notification(shopper)

    response = alice.post("/notifications/api/read/", {"id": notification.pk, "next": "/notifications/?page=2"})

    assert response.status_code == 302
    assert response.url == "/notifications/?page=2"

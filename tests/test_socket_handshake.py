"""The notifications socket's handshake: its database reads and the threads they run on (issue 8)."""

import asyncio
import subprocess
import sys
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from notifications import middleware
from notifications.models import Notification, NotificationStream
from shop.asgi import application


def write_notifications(user, count: int) -> list[int]:
    return [
        Notification.objects.create(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title="t", url="/").pk
        for _ in range(count)
    ]


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def hello(cookie: bytes) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(
        application, "/ws/notifications/", headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator, await communicator.receive_json_from(timeout=5)


@pytest.mark.django_db
def test_summary_reads_unread_count_newest_id_and_seq_in_one_query(shopper, other_shopper, django_assert_num_queries):
    read, *unread = write_notifications(shopper, 3)
    Notification.objects.filter(pk=read).update(read_at=timezone.now())
    write_notifications(other_shopper, 2)  # newer ids and other streams, not hers

    with django_assert_num_queries(1):
        summary = NotificationStream.objects.summary(shopper.pk)

    assert summary == (len(unread), unread[-1], 3)


@pytest.mark.django_db
def test_summary_of_a_user_without_notifications_is_zeros(shopper, other_shopper):
    write_notifications(other_shopper, 1)

    assert NotificationStream.objects.summary(shopper.pk) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_a_handshake_does_not_queue_behind_asgirefs_single_database_thread(shopper):
    """Every socket's database calls used to run on asgiref's one thread-sensitive thread: while a
    slow call held it (a replay, a heartbeat), no socket of the process could open.
    """
    cookie = await sync_to_async(session_cookie)(shopper)
    await sync_to_async(write_notifications)(shopper, 2)
    release = threading.Event()
    busy = asyncio.ensure_future(sync_to_async(release.wait)())  # holds the thread-sensitive thread
    try:
        communicator, frame = await hello(cookie)
        assert (frame["type"], frame["unread"], frame["last_seq"]) == ("hello", 2, 2)
        await communicator.disconnect()
    finally:
        release.set()
        await busy


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_thread_connections", "in_memory_layer")
async def test_handshake_threads_hand_their_connection_back_after_each_call(shopper, other_shopper):
    """A thread kept its connection between calls in an earlier attempt: PostgreSQL then refused
    to drop the test database, and in production each thread would pin a pooled connection.
    """
    cookies = [await sync_to_async(session_cookie)(user) for user in (shopper, other_shopper)]
    sockets = [(await hello(cookie))[0] for cookie in cookies * 3]

    # One check on each thread at once: the barrier holds every thread until all have one.
    barrier = threading.Barrier(middleware.HANDSHAKE_THREADS, timeout=5)

    def holds_a_connection() -> bool:
        barrier.wait()
        return connection.connection is not None

    loop = asyncio.get_running_loop()
    held = await asyncio.gather(
        *(
            loop.run_in_executor(middleware._handshake_executor, holds_a_connection)
            for _ in range(middleware.HANDSHAKE_THREADS)
        )
    )
    for communicator in sockets:
        await communicator.disconnect()
    assert held == [False] * middleware.HANDSHAKE_THREADS


def test_autobahn_formats_its_debug_lines_only_when_they_are_logged():
    """autobahn pretty-printed its configuration on every connection for a dropped debug line
    (about 0.5 ms of CPU per socket); under daphne, shop.asgi makes that formatting lazy.
    """
    script = """
import pprint
import daphne.server  # noqa: F401 - what daphne has imported before it loads the application
import txaio
from autobahn.websocket import protocol
import shop.asgi  # noqa: F401
value = [("openHandshakeTimeout", 5, "WebSocketServerFactory")]
print(protocol.pformat(value) != pprint.pformat(value))
txaio.set_global_log_level("debug")
print(protocol.pformat(value) == pprint.pformat(value))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=settings.BASE_DIR
    )

    assert done.stdout.split() == ["True", "True"], done.stderr

"""The per-recipient notification stream: gap-free sequence numbers in commit order, resume by
sequence, the page's starting point, and the replay budget.

A resume cursor "id greater than N" skips a row that commits after a higher id (ids are handed
out at insert, not at commit). The stream numbers each user's notifications 1, 2, 3... under a
per-recipient lock taken right before the row is written, so the numbers follow commit order
and a client can tell a gap from a quiet stream.
"""

import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from notifications import services
from notifications.models import Notification

SOCKET_PATH = "/ws/notifications/"
OUR_ORIGIN = b"http://127.0.0.1"


def notify(user, title: str) -> Notification:
    return services.notify(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title, url="/orders/")


def notify_in_transaction(user, title: str) -> Notification:
    with transaction.atomic():
        return notify(user, title)


def log_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# Sequence numbers ----------------------------------------------------------------------


@pytest.mark.django_db
def test_each_users_notifications_are_numbered_one_two_three_without_gaps(shopper, other_shopper):
    with transaction.atomic():
        alice_first = notify(shopper, "a1")
        bob_first = notify(other_shopper, "b1")
        alice_second = notify(shopper, "a2")
    alice_third = notify_in_transaction(shopper, "a3")

    assert [alice_first.seq, alice_second.seq, alice_third.seq] == [1, 2, 3]
    assert bob_first.seq == 1
    assert list(Notification.objects.for_user(shopper).order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]


@pytest.mark.django_db
def test_a_rolled_back_notification_leaves_no_gap_in_the_sequence(shopper):
    notify_in_transaction(shopper, "kept")
    with pytest.raises(RuntimeError), transaction.atomic():
        notify(shopper, "rolled back")
        raise RuntimeError("the order change failed")

    assert notify_in_transaction(shopper, "next").seq == 2


@pytest.mark.django_db
def test_a_notification_written_without_notify_still_gets_the_next_number(shopper):
    """The admin, the shell or a fixture writing a row directly must not break the stream."""
    notify_in_transaction(shopper, "first")

    direct = Notification.objects.create(recipient=shopper, kind=Notification.Kind.ORDER_SHIPPED, title="direct")

    assert direct.seq == 2


def _waiting_on_a_lock(thread_done: threading.Event, *, timeout: float = 5.0) -> bool:
    """Wait until the second writer is blocked (PostgreSQL: seen in pg_stat_activity)."""
    if connection.vendor != "postgresql":
        # SQLite takes the database lock at BEGIN IMMEDIATE: the writer blocks there. Give it time
        # to get there; if it did not block at all, it has finished by now and the test fails.
        thread_done.wait(0.5)
        return not thread_done.is_set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not thread_done.is_set():
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


@pytest.mark.django_db(transaction=True)
def test_two_notifications_of_one_user_committing_concurrently_are_numbered_in_commit_order(shopper):
    """The first writer holds its transaction open; the second, started later, must wait for it.

    Today's failure: the second commits first with a higher id, a client resuming "after the id
    it has seen" then skips the first one when it commits. With the stream, the second writer
    waits for the first one's commit and so takes the next number.
    """
    first_written, release_first, second_done = threading.Event(), threading.Event(), threading.Event()
    commit_order: list[str] = []
    errors: list[BaseException] = []

    def writer(title: str, *, before_commit=None, before_start=None, done=None):
        try:
            if before_start is not None:
                before_start.wait(10)
            with transaction.atomic():
                notify(shopper, title)
                if before_commit is not None:
                    before_commit()
            commit_order.append(title)
        except BaseException as error:  # Reported by the main thread.
            errors.append(error)
        finally:
            connections.close_all()
            if done is not None:
                done.set()

    def hold_open():
        first_written.set()
        release_first.wait(10)

    first = threading.Thread(target=writer, args=("first",), kwargs={"before_commit": hold_open})
    second = threading.Thread(
        target=writer, args=("second",), kwargs={"before_start": first_written, "done": second_done}
    )
    first.start()
    second.start()
    try:
        blocked = _waiting_on_a_lock(second_done)
    finally:
        release_first.set()
        first.join(10)
        second.join(10)

    assert not errors, errors
    assert blocked, "the second writer did not wait for the first one's transaction"
    assert commit_order == ["first", "second"]
    by_seq = list(Notification.objects.for_user(shopper).order_by("seq").values_list("title", "seq"))
    assert by_seq == [("first", 1), ("second", 2)]
    print(f"\n[stream] commit order {commit_order}, by seq {by_seq}, database {connection.vendor}")


@pytest.mark.django_db(transaction=True)
def test_migration_numbers_existing_notifications_per_user_in_id_order(shopper, other_shopper):
    executor = MigrationExecutor(connection)
    executor.migrate([("notifications", "0001_initial")])
    old_apps = executor.loader.project_state([("notifications", "0001_initial")]).apps
    OldNotification = old_apps.get_model("notifications", "Notification")
    for recipient, title in [(shopper, "a1"), (other_shopper, "b1"), (shopper, "a2"), (shopper, "a3")]:
        OldNotification.objects.create(recipient_id=recipient.pk, kind="order_shipped", title=title)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    numbered = list(Notification.objects.order_by("pk").values_list("title", "seq"))
    assert numbered == [("a1", 1), ("b1", 1), ("a2", 2), ("a3", 3)]
    # The stream continues after the backfilled numbers.
    assert notify_in_transaction(shopper, "a4").seq == 4
    assert notify_in_transaction(other_shopper, "b2").seq == 2

"""The notifications admin: staff find notifications and push them again."""

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from notifications.models import Notification
from tests.fakes import SpyLayer, use_layer

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/notifications/notification/"


@pytest.fixture(autouse=True)
def spy_layer(settings):
    return use_layer(settings, SpyLayer)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def notifications(shopper, other_shopper):
    """Four notifications in different states, by title."""
    now = timezone.now()
    rows = {
        "shipped-new": Notification.objects.create(
            recipient=shopper, kind="order_shipped", title="Order AAA has shipped"
        ),
        "shipped-read": Notification.objects.create(
            recipient=shopper, kind="order_shipped", title="Order BBB has shipped", delivered_at=now, read_at=now
        ),
        "placed-delivered": Notification.objects.create(
            recipient=other_shopper, kind="order_placed", title="Order CCC placed", delivered_at=now
        ),
        "refunded": Notification.objects.create(
            recipient=other_shopper, kind="order_refunded", title="Order DDD was refunded", body="12.00 EUR back"
        ),
    }
    return rows


def listed(response) -> set[int]:
    assert response.status_code == 200
    return {notification.pk for notification in response.context["cl"].result_list}


def ids(notifications, *names) -> set[int]:
    return {notifications[name].pk for name in names}


def test_staff_sees_every_notification(staff_client, notifications):
    assert listed(staff_client.get(CHANGELIST)) == ids(notifications, *notifications)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("BBB", ["shipped-read"]),
        ("bob", ["placed-delivered", "refunded"]),  # the recipient's username
        ("alice@example.com", ["shipped-new", "shipped-read"]),  # the recipient's email
        ("12.00 EUR", ["refunded"]),  # the body
    ],
)
def test_staff_can_search_notifications(staff_client, notifications, query, expected):
    assert listed(staff_client.get(CHANGELIST, {"q": query})) == ids(notifications, *expected)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"kind": "order_shipped"}, ["shipped-new", "shipped-read"]),
        ({"kind": "order_refunded"}, ["refunded"]),
        ({"delivered": "yes"}, ["shipped-read", "placed-delivered"]),
        ({"delivered": "no"}, ["shipped-new", "refunded"]),
        ({"read": "yes"}, ["shipped-read"]),
        ({"read": "no"}, ["shipped-new", "placed-delivered", "refunded"]),
        ({"kind": "order_shipped", "read": "no"}, ["shipped-new"]),
    ],
)
def test_staff_can_filter_notifications(staff_client, notifications, filters, expected):
    assert listed(staff_client.get(CHANGELIST, filters)) == ids(notifications, *expected)


def test_resend_action_pushes_each_selected_notification_and_says_so(
    staff_client, notifications, spy_layer, shopper, other_shopper
):
    chosen = [notifications["shipped-new"], notifications["refunded"]]

    response = staff_client.post(
        CHANGELIST, {"action": "resend", "_selected_action": [n.pk for n in chosen]}, follow=True
    )

    assert response.status_code == 200
    pushed = sorted((group, message["notification"]["id"]) for group, message in spy_layer.group_sends)
    assert pushed == sorted(
        [
            (f"notifications.user.{shopper.pk}", notifications["shipped-new"].pk),
            (f"notifications.user.{other_shopper.pk}", notifications["refunded"].pk),
        ]
    )
    assert [str(message) for message in get_messages(response.wsgi_request)] == [
        "2 notification(s) queued for delivery."
    ]


def test_notifications_cannot_be_added_by_hand(staff_client):
    assert staff_client.get(CHANGELIST + "add/").status_code == 403


def test_shopper_cannot_open_the_notifications_admin(client, shopper, notifications):
    client.force_login(shopper)

    response = client.get(CHANGELIST)

    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")

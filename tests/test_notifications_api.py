"""The inbox page and the JSON API for clients that cannot hold a socket."""

import pytest
from django.test import Client

from notifications.models import Notification

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("in_memory_layer")]


def make_notifications(user, count, *, read=False, title="Order {n} has shipped") -> list[Notification]:
    notifications = []
    for n in range(count):
        notification = Notification.objects.create(
            recipient=user,
            kind=Notification.Kind.ORDER_SHIPPED,
            title=title.format(n=n),
            body="On its way.",
            url="/orders/",
        )
        if read:
            Notification.objects.filter(pk=notification.pk).update(read_at=notification.created_at)
        notifications.append(notification)
    return notifications


@pytest.fixture
def alice(client, shopper):
    client.force_login(shopper)
    return client


def error_code(response) -> str:
    return response.json()["error"]["code"]


# GET /notifications/api/ ---------------------------------------------------------------


def test_list_gives_the_users_notifications_newest_first_with_their_fields(alice, shopper, other_shopper):
    mine = make_notifications(shopper, 3)
    make_notifications(other_shopper, 2)
    Notification.objects.filter(pk=mine[0].pk).update(read_at=mine[0].created_at)

    response = alice.get("/notifications/api/")

    assert response.status_code == 200
    payload = response.json()
    assert [item["id"] for item in payload["notifications"]] == [n.pk for n in reversed(mine)]
    assert payload["unread"] == 2
    assert payload["has_more"] is False
    newest = payload["notifications"][0]
    assert newest == {
        "type": "notification",
        "id": mine[2].pk,
        "seq": mine[2].seq,
        "kind": "order_shipped",
        "title": "Order 2 has shipped",
        "body": "On its way.",
        "url": "/orders/",
        "created_at": mine[2].created_at.isoformat(),
        "read": False,
    }
    assert payload["notifications"][-1]["read"] is True


def test_list_after_an_id_gives_the_newer_ones_oldest_first(alice, shopper, other_shopper):
    mine = []
    for _ in range(4):
        mine += make_notifications(shopper, 1)
        make_notifications(other_shopper, 1)

    response = alice.get(f"/notifications/api/?after={mine[1].pk}")

    assert response.status_code == 200
    assert [item["id"] for item in response.json()["notifications"]] == [mine[2].pk, mine[3].pk]


@pytest.mark.parametrize("after", ["abc", "-1", "1.5", "", "\u00b2", "9" * 5000])
def test_list_with_a_bad_after_is_a_400_json_error(alice, after):
    response = alice.get("/notifications/api/", {"after": after})

    assert response.status_code == 400
    assert error_code(response) == "bad_id"


def test_list_for_anonymous_visitor_is_401(client):
    response = client.get("/notifications/api/")

    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"


# GET /notifications/api/unread/ --------------------------------------------------------


def test_unread_counts_only_the_users_unread_notifications(alice, shopper, other_shopper):
    make_notifications(shopper, 2)
    make_notifications(shopper, 3, read=True)
    make_notifications(other_shopper, 4)

    response = alice.get("/notifications/api/unread/")

    assert response.status_code == 200
    assert response.json() == {"unread": 2}


def test_unread_for_anonymous_visitor_is_401(client):
    assert client.get("/notifications/api/unread/").status_code == 401


# POST /notifications/api/read/ ---------------------------------------------------------


def test_read_one_by_json_marks_it_read_and_returns_the_new_count(alice, shopper):
    first, second = make_notifications(shopper, 2)

    response = alice.post("/notifications/api/read/", {"id": first.pk}, content_type="application/json")

    assert response.status_code == 200
    assert response.json() == {"unread": 1}
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.read_at is not None
    assert second.read_at is None


def test_read_all_by_json_marks_every_one_of_the_users_notifications_read(alice, shopper, other_shopper):
    make_notifications(shopper, 3)
    [bobs] = make_notifications(other_shopper, 1)

    response = alice.post("/notifications/api/read/", {"all": True}, content_type="application/json")

    assert response.status_code == 200
    assert response.json() == {"unread": 0}
    assert not Notification.objects.filter(recipient=shopper, read_at__isnull=True).exists()
    bobs.refresh_from_db()
    assert bobs.read_at is None


def test_read_by_form_post_redirects_to_next(alice, shopper):
    [notification] = make_notifications(shopper, 1)

    response = alice.post("/notifications/api/read/", {"id": notification.pk, "next": "/orders/"})

    assert response.status_code == 302
    assert response.url == "/orders/"
    notification.refresh_from_db()
    assert notification.read_at is not None


def test_read_all_by_form_post_with_an_offsite_next_redirects_to_the_inbox(alice, shopper):
    make_notifications(shopper, 2)

    response = alice.post("/notifications/api/read/", {"all": "1", "next": "https://evil.example/"})

    assert response.status_code == 302
    assert response.url == "/notifications/"
    assert not Notification.objects.filter(read_at__isnull=True).exists()


def test_reading_another_users_notification_is_404_and_changes_nothing(alice, other_shopper):
    [bobs] = make_notifications(other_shopper, 1)

    response = alice.post("/notifications/api/read/", {"id": bobs.pk}, content_type="application/json")

    assert response.status_code == 404
    assert error_code(response) == "not_found"
    bobs.refresh_from_db()
    assert bobs.read_at is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"id": "seven"}', "bad_id"),
        ('{"id": -1}', "bad_id"),
        ("{}", "bad_id"),
        ('{"id": "\u00b2"}', "bad_id"),
        ("{not json", "bad_json"),
        ("[1]", "bad_message"),
    ],
)
def test_read_with_a_bad_body_is_a_400_json_error(alice, body, code):
    response = alice.post("/notifications/api/read/", body, content_type="application/json")

    assert response.status_code == 400
    assert error_code(response) == code


def test_read_without_csrf_token_is_refused(shopper):
    [notification] = make_notifications(shopper, 1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(shopper)

    response = client.post("/notifications/api/read/", {"id": notification.pk}, content_type="application/json")

    assert response.status_code == 403
    notification.refresh_from_db()
    assert notification.read_at is None


def test_read_with_the_csrf_token_of_the_inbox_page_is_accepted(shopper):
    [notification] = make_notifications(shopper, 1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(shopper)
    client.get("/notifications/")

    response = client.post(
        "/notifications/api/read/",
        {"id": notification.pk},
        content_type="application/json",
        headers={"X-CSRFToken": client.cookies["csrftoken"].value},
    )

    assert response.status_code == 200
    notification.refresh_from_db()
    assert notification.read_at is not None


def test_read_for_anonymous_visitor_is_401(client):
    response = client.post("/notifications/api/read/", {"all": True}, content_type="application/json")

    assert response.status_code == 401


def test_api_read_refuses_get(alice):
    assert alice.get("/notifications/api/read/").status_code == 405


# The inbox page ------------------------------------------------------------------------


def test_inbox_lists_only_the_users_notifications_newest_first(alice, shopper, other_shopper):
    mine = make_notifications(shopper, 3, title="Alice's order {n}")
    make_notifications(other_shopper, 2, title="Bob's order {n}")

    response = alice.get("/notifications/")

    assert response.status_code == 200
    assert [n.pk for n in response.context["notifications"]] == [n.pk for n in reversed(mine)]
    content = response.content.decode()
    assert content.index("Alice&#x27;s order 2") < content.index("Alice&#x27;s order 0")
    assert "Bob" not in content


def test_inbox_is_paginated(alice, shopper):
    notifications = make_notifications(shopper, 25)

    first_page = alice.get("/notifications/")
    second_page = alice.get("/notifications/?page=2")

    assert [n.pk for n in first_page.context["notifications"]] == [n.pk for n in reversed(notifications[5:])]
    assert [n.pk for n in second_page.context["notifications"]] == [n.pk for n in reversed(notifications[:5])]
    assert 'href="?page=2"' in first_page.content.decode()


def test_inbox_redirects_anonymous_visitor_to_login(client):
    response = client.get("/notifications/")

    assert response.status_code == 302
    assert response.url == "/accounts/login/?next=/notifications/"

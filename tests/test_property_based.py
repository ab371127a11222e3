"""Property-based tests (hypothesis): whatever a client sends, the answer is a clear one.

Over the cart, checkout and signup forms, the notifications JSON API and the socket's frames:
never a 5xx, never a traceback in the body, and every refusal says what was wrong (a 4xx with
a message, or a redirect with a flash message). Redirects only ever go to a path of this site.
Example counts stay modest so the file runs in seconds; the example database is off, so a run
leaves nothing behind (a failure prints the example that reproduces it).
PROPERTY_EXAMPLES=N runs N examples per property instead of 60.
"""

import json
import os
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from notifications import services as notification_services
from notifications.models import Notification
from shop import services
from shop.asgi import application

# Hypothesis keeps caches (string constants, unicode tables) on disk: in test-output/, not the project root.
set_hypothesis_home_dir(Path(__file__).resolve().parent.parent / "test-output" / "hypothesis")

PROPERTY = hypothesis_settings(
    # PROPERTY_EXAMPLES=1000 for a deeper hunt than the suite's quick pass.
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES") or 60),
    deadline=None,
    database=None,
    # The database fixtures are per test, shared by its examples on purpose: state piles up
    # (a fuller cart, spent tokens, read notifications) and each example meets a different shop.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# A refusal's message: a field's error list, an error or warning flash, or the product page's
# sold-out notice (a sold-out product page has no form to show a quantity error on).
ERROR_MESSAGE = re.compile(
    r'class="(?:errorlist[^"]*|message message-error|message message-warning)"[^>]*>\s*(?:<li>)?\s*\S|data-sold-out'
)

# Text a person or a script might type into a number field, beyond what hypothesis invents.
TRICKY_NUMBERS = [
    "",
    " ",
    " 3 ",
    "1e3",
    "0x10",
    "1.5",
    "-0",
    "٣",
    "²",
    "NaN",
    "99999999999999999999999",
    "\x00",
    "1\x00",
]
numberish = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(TRICKY_NUMBERS),
    st.text(max_size=30),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
next_values = st.one_of(
    st.none(),
    st.sampled_from(["/cart/", "//evil.example/", "https://evil.example/", "javascript:alert(1)", "cart", "/\\evil"]),
    st.text(max_size=30),
)


def body_of(response) -> str:
    return response.content.decode(errors="replace")


def assert_clear_answer(response) -> None:
    """No 5xx, no traceback; a refusal carries its message; a redirect stays on this site."""
    body = body_of(response)
    assert response.status_code < 500, body[:500]
    assert "Traceback" not in body
    if response.status_code in (301, 302, 303):
        location = response["Location"]
        assert location.startswith("/") and not location.startswith("//") and "\\" not in location, location
        # Only this request's messages count, not ones left in the session by earlier examples.
        queued = response.wsgi_request._messages._queued_messages
        assert queued, f"a redirect to {location} without a flash message"
    elif response.status_code >= 400:
        if response.headers["Content-Type"].startswith("application/json"):
            assert response.json()["error"]["detail"].strip(), body
        else:
            assert ERROR_MESSAGE.search(body), f"{response.status_code} without a visible message: {body[:300]}"


def form_data(**fields) -> dict:
    """Posted form fields: None leaves a field out; everything else is sent as text."""
    return {name: str(value) for name, value in fields.items() if value is not None}


@pytest.fixture
def shelf(make_product):
    return [
        make_product(name="Kettle", stock=5),
        make_product(name="Teapot", stock=1),
        make_product(name="Gone", stock=0),
        make_product(name="Hidden", stock=5, is_active=False),
    ]


def products(shelf):
    return st.one_of(st.sampled_from([product.pk for product in shelf]), numberish)


# Cart -----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cart_forms_answer_anything_clearly(shelf):
    client = Client()
    seen = set()

    @PROPERTY
    @given(
        endpoint=st.sampled_from(["/cart/add/", "/cart/update/", "/cart/remove/"]),
        product=st.one_of(st.none(), products(shelf)),
        quantity=st.one_of(st.none(), numberish),
        next_=next_values,
    )
    def check(endpoint, product, quantity, next_):
        response = client.post(endpoint, form_data(product=product, quantity=quantity, next=next_))
        assert_clear_answer(response)
        seen.add((endpoint, response.status_code))

    check()
    print(f"cart: (endpoint, status) seen: {sorted(seen)}")


# Checkout -------------------------------------------------------------------------------------------------


CARD_NUMBERS = ["4242 4242 4242 4242", "4000 0000 0000 0002", "4000 0000 0000 9995", "4000000000000119"]
# Where the parcel and the receipt go, as a shopper fills it in.
ADDRESS = {
    "full_name": "Ada Lovelace",
    "line1": "1 Rue de la Paix",
    "city": "Paris",
    "postal_code": "75001",
    "country": "FR",
    "email": "ada@example.com",
}
# A form the checkout accepts (the bank decides: approved, declined, no funds, bank error), or anything at all.
well_formed_cards = st.fixed_dictionaries(
    {"number": st.sampled_from(CARD_NUMBERS), "expiry": st.just("12/40"), "cvc": st.sampled_from(["123", "9876"])}
).map(lambda card: {**ADDRESS, **card})
any_cards = st.fixed_dictionaries(
    {
        "number": st.one_of(st.none(), st.sampled_from([*CARD_NUMBERS, "1234"]), st.text(max_size=30)),
        "expiry": st.one_of(st.none(), st.sampled_from(["12/40", "01/20", "13/30", "12 / 2040"]), st.text(max_size=12)),
        "cvc": st.one_of(st.none(), st.sampled_from(["123", "1234", "12a"]), st.text(max_size=6)),
        "postal_code": st.one_of(st.none(), st.just("75001"), st.text(max_size=25)),
        "country": st.one_of(st.none(), st.just("FR"), st.text(max_size=3)),
    }
).map(lambda fields: {**ADDRESS, **fields})


@pytest.mark.django_db
def test_checkout_form_answers_anything_clearly(make_product, shopper):
    mugs = make_product(name="Mug", stock=1000)
    client = Client()
    client.force_login(shopper)
    seen = set()

    @PROPERTY
    @given(
        card=st.one_of(well_formed_cards, any_cards),
        token=st.one_of(st.just("the page's"), st.text(max_size=70)),
        quantity=st.integers(min_value=0, max_value=3),
    )
    def check(card, token, quantity):
        cart = services.get_cart(user=shopper, create=True)
        if quantity and not cart.item_count:
            # A paid order emptied the cart: fill it again, most of the time.
            services.add_to_cart(cart=cart, product=mugs, quantity=quantity)
        if token == "the page's":
            client.get("/checkout/")  # The page puts this session's token in it.
            token = client.session.get("checkout_token", token)
        response = client.post("/checkout/", form_data(checkout_token=token, **card))
        assert_clear_answer(response)
        seen.add(response.status_code)

    check()
    print(f"checkout: statuses seen: {sorted(seen)}")


# Signup ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_signup_form_answers_anything_clearly(make_user):
    make_user(username="taken")
    seen = set()
    well_formed = st.fixed_dictionaries(
        {
            "username": st.one_of(st.just("taken"), st.from_regex(r"[a-z][a-z0-9_]{2,12}", fullmatch=True)),
            "email": st.emails(),
            "password1": st.just("Xq9!long-pass"),
            "password2": st.sampled_from(["Xq9!long-pass", "Xq9!other-pass"]),
        }
    )
    anything = st.fixed_dictionaries(
        {
            "username": st.one_of(st.none(), st.sampled_from(["taken", "a" * 200]), st.text(max_size=40)),
            "email": st.one_of(st.none(), st.text(max_size=40)),
            "password1": st.one_of(st.none(), st.sampled_from(["password", "12345678"]), st.text(max_size=40)),
            "password2": st.one_of(st.none(), st.text(max_size=40)),
        }
    )

    @PROPERTY
    @given(fields=st.one_of(well_formed, anything))
    def check(fields):
        response = Client().post("/accounts/signup/", form_data(**fields))
        assert_clear_answer(response)
        seen.add(response.status_code)

    check()
    print(f"signup: statuses seen: {sorted(seen)}")


# The notifications JSON API --------------------------------------------------------------------------------


def notify(user, title: str) -> Notification:
    with transaction.atomic():
        return notification_services.notify(recipient=user, kind=Notification.Kind.ORDER_SHIPPED, title=title)


@pytest.mark.django_db
def test_notifications_api_answers_any_query_clearly(shopper):
    client = Client()
    client.force_login(shopper)
    notify(shopper, "one")

    @PROPERTY
    @given(name=st.sampled_from(["after", "after_seq"]), value=st.one_of(numberish, st.text(max_size=30)))
    def check(name, value):
        response = client.get("/notifications/api/", {name: str(value)})
        assert_clear_answer(response)
        if response.status_code == 200:
            assert isinstance(response.json()["notifications"], list)
        else:
            assert response.status_code == 400

    check()


@pytest.mark.django_db
def test_notifications_read_api_answers_any_body_clearly(shopper, other_shopper):
    client = Client()
    client.force_login(shopper)
    ids = [notify(shopper, f"mine {n}").pk for n in range(3)] + [notify(other_shopper, "theirs").pk]
    theirs = ids[-1]

    @PROPERTY
    @given(
        body=st.one_of(
            json_values.map(json.dumps),
            st.fixed_dictionaries({"id": st.one_of(st.sampled_from(ids), json_values)}).map(json.dumps),
            st.fixed_dictionaries({"all": json_values}).map(json.dumps),
            st.text(max_size=40),
            st.binary(max_size=40),
        )
    )
    def check(body):
        response = client.post("/notifications/api/read/", body, content_type="application/json")
        assert_clear_answer(response)
        assert response.status_code in (200, 400, 404)
        assert Notification.objects.get(pk=theirs).read_at is None, "another user's notification was marked read"

    check()


@pytest.mark.django_db
def test_notifications_read_form_answers_any_fields_clearly(shopper):
    client = Client()
    client.force_login(shopper)
    ids = [notify(shopper, f"mine {n}").pk for n in range(3)]

    @PROPERTY
    @given(
        id_=st.one_of(st.none(), st.sampled_from(ids), numberish),
        all_=st.one_of(st.none(), st.sampled_from(["1", "0", "false", ""]), st.text(max_size=5)),
        next_=next_values,
    )
    def check(id_, all_, next_):
        response = client.post("/notifications/api/read/", form_data(id=id_, all=all_, next=next_))
        body = body_of(response)
        assert response.status_code < 500 and "Traceback" not in body
        if response.status_code == 302:
            # Marking read is quiet (no flash): the inbox shows the result. It stays on this site.
            location = response["Location"]
            assert location.startswith("/") and not location.startswith("//") and "\\" not in location, location
        else:
            assert response.status_code in (400, 404)
            assert response.json()["error"]["detail"].strip()

    check()


# The socket's frames ----------------------------------------------------------------------------------------

FRAME_TYPES = ["ping", "resume", "ack", "read", "read_all", "hello", "", "PING"]
SERVER_TYPES = {"hello", "notification", "unread", "pong", "error", "replayed"}

frames = st.one_of(
    # Frames shaped like the protocol's, with anything in their fields.
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(FRAME_TYPES), json_values)},
        optional={"id": json_values, "after": json_values, "after_seq": json_values},
    ).map(json.dumps),
    json_values.map(json.dumps),  # Any JSON value at all.
    st.text(max_size=60),  # Not JSON, mostly.
    st.sampled_from(["x" * 5000, '{"type": "ping", "pad": "' + "y" * 5000 + '"}', "[" * 2000 + "]" * 2000]),
)


async def converse(user_id: int, session_key: str, sent: list[str]) -> list[dict]:
    """Send each frame, then a ping; return every frame the server sent until the last pong."""
    communicator = WebsocketCommunicator(
        application,
        "/ws/notifications/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={session_key}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    received = [await communicator.receive_json_from(timeout=5)]
    try:
        for frame in sent:
            # send_input, not send_to: an empty text frame is a frame too.
            await communicator.send_input({"type": "websocket.receive", "text": frame})
            await communicator.send_json_to({"type": "ping"})
            for _ in range(200):
                output = await communicator.receive_output(timeout=5)
                assert output["type"] == "websocket.send", f"the socket closed after {frame[:80]!r}: {output}"
                received.append(json.loads(output["text"]))
                if received[-1]["type"] == "pong":
                    break
    finally:
        await communicator.disconnect()
    return received


# Transactional: channels' database_sync_to_async closes a connection found inside a transaction.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_memory_layer")
def test_socket_answers_any_frame_clearly_and_stays_open(shopper, other_shopper):
    client = Client()
    client.force_login(shopper)
    session_key = client.cookies["sessionid"].value
    mine = {notify(shopper, f"mine {n}").pk for n in range(2)}
    theirs = notify(other_shopper, "theirs").pk
    errors = {}

    @PROPERTY
    @given(sent=st.lists(frames, min_size=1, max_size=4))
    def check(sent):
        # async_to_sync from this thread: the consumer's ORM calls come back to it (thread-sensitive).
        received = async_to_sync(converse)(shopper.pk, session_key, sent)
        for frame in received:
            assert isinstance(frame, dict) and frame.get("type") in SERVER_TYPES, frame
            if frame["type"] == "error":
                assert frame["code"] and frame["detail"].strip(), frame
                errors[frame["code"]] = errors.get(frame["code"], 0) + 1
            if frame["type"] == "notification":
                assert frame["id"] in mine, "another user's notification reached this socket"
        assert Notification.objects.get(pk=theirs).read_at is None

    check()
    print(f"socket: error codes seen: {errors}")

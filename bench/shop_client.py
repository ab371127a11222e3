"""A tiny shopper for the benchmark: http.client, a cookie jar, CSRF, no redirect following.

One Shopper is one browser: it keeps its cookies (session, csrftoken) across servers, since
every server of one bench run shares the database and the secret key. Connections are kept
alive per port, so a timed request measures the server, not a TCP handshake.
"""

import http.client
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

TEST_CARD = {"number": "4242424242424242", "expiry": "12/30", "cvc": "123"}


class ShopperError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str
    started: float  # time.perf_counter() just before the request was sent
    finished: float  # time.perf_counter() once the whole body was read
    arrived_at: float  # time.time() at the same moment, to compare with server timestamps

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def location_path(self) -> str:
        return urlsplit(self.headers.get("Location", "")).path


class _FormParser(HTMLParser):
    """Collect every <form> with its action and the name/value of its inputs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form":
            self._current = {"action": attributes.get("action") or "", "fields": {}}
            self.forms.append(self._current)
        elif tag == "input" and attributes.get("name"):
            target = self._current if self._current is not None else {"fields": {}}
            target["fields"].setdefault(attributes["name"], attributes.get("value") or "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[dict]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class Shopper:
    def __init__(self, username: str = "", password: str = "", *, timeout: float = 30.0):
        self.username, self.password = username, password
        self.timeout = timeout
        self.cookies: dict[str, str] = {}
        self._connections: dict[int, http.client.HTTPConnection] = {}

    # Transport ------------------------------------------------------------------------

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def _store_cookies(self, headers: http.client.HTTPMessage) -> None:
        for header in headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                expired = morsel["max-age"] in {"0", 0} or (morsel["expires"] and "1970" in morsel["expires"])
                if expired or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def request(self, port: int, method: str, path: str, fields: dict | None = None) -> Response:
        body = urlencode(fields) if fields is not None else None
        headers = {"Host": f"127.0.0.1:{port}", "Connection": "keep-alive"}
        if self.cookies:
            headers["Cookie"] = self.cookie_header()
        if method == "POST":
            origin = f"http://127.0.0.1:{port}"
            headers.update(
                {"Origin": origin, "Referer": origin + path, "Content-Type": "application/x-www-form-urlencoded"}
            )
        for attempt in (1, 2):
            reused = port in self._connections
            connection = self._connections.get(port) or http.client.HTTPConnection(
                "127.0.0.1", port, timeout=self.timeout
            )
            self._connections[port] = connection
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                reply = connection.getresponse()
                text = reply.read().decode("utf-8", errors="replace")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                del self._connections[port]
                # A kept-alive connection the server had closed: nothing reached the view, retry once.
                if reused and attempt == 1:
                    continue
                raise
            finished, arrived_at = time.perf_counter(), time.time()
            if reply.getheader("Connection", "").lower() == "close":
                connection.close()
                del self._connections[port]
            self._store_cookies(reply.headers)
            return Response(reply.status, reply.headers, text, started, finished, arrived_at)
        raise AssertionError("unreachable")

    def get(self, port: int, path: str) -> Response:
        return self.request(port, "GET", path)

    def post(self, port: int, path: str, fields: dict) -> Response:
        return self.request(port, "POST", path, fields)

    def csrf(self) -> str:
        token = self.cookies.get("csrftoken")
        if not token:
            raise ShopperError(f"{self.username or 'anonymous'} has no csrftoken cookie")
        return token

    # Shop actions ---------------------------------------------------------------------

    def log_in(self, port: int) -> None:
        page = self.get(port, "/accounts/login/")
        if page.status != 200:
            raise ShopperError(f"GET /accounts/login/ answered {page.status}")
        token = self.cookies.get("csrftoken") or next(
            (
                form["fields"]["csrfmiddlewaretoken"]
                for form in parse_forms(page.body)
                if "csrfmiddlewaretoken" in form["fields"]
            ),
            "",
        )
        done = self.post(
            port,
            "/accounts/login/",
            {"username": self.username, "password": self.password, "csrfmiddlewaretoken": token},
        )
        if done.status != 302 or "sessionid" not in self.cookies:
            raise ShopperError(f"login of {self.username} answered {done.status} (expected 302 and a session)")

    def add_to_cart(self, port: int, product_id: int, quantity: int = 1) -> None:
        done = self.post(
            port, "/cart/add/", {"product": product_id, "quantity": quantity, "csrfmiddlewaretoken": self.csrf()}
        )
        if done.status != 302:
            raise ShopperError(f"POST /cart/add/ answered {done.status} for {self.username}")

    def open_checkout(self, port: int) -> dict:
        """GET /checkout/ and return the payment form's fields (checkout_token, csrf) with the test card."""
        page = self.get(port, "/checkout/")
        if page.status != 200:
            raise ShopperError(
                f"GET /checkout/ answered {page.status} for {self.username} (Location {page.location_path!r})"
            )
        form = next((form for form in parse_forms(page.body) if "checkout_token" in form["fields"]), None)
        if form is None or not form["fields"]["checkout_token"]:
            raise ShopperError(
                "the checkout page has no <input name=checkout_token> with a value (templates not ready?)"
            )
        fields = {
            name: value for name, value in form["fields"].items() if name in {"checkout_token", "csrfmiddlewaretoken"}
        }
        fields.setdefault("csrfmiddlewaretoken", self.csrf())
        return {**fields, **TEST_CARD}

    def pay(self, port: int, checkout_fields: dict) -> Response:
        """POST the checkout form; the caller times it. Raise unless it is the 302 to the order."""
        done = self.post(port, "/checkout/", checkout_fields)
        if done.status != 302 or not done.location_path.startswith("/orders/"):
            raise ShopperError(
                f"POST /checkout/ answered {done.status} (Location {done.location_path!r}) for {self.username}"
            )
        return done

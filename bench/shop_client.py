"""A tiny shopper for the benchmark: HTTP/1.1 on asyncio streams, a cookie jar, CSRF, no redirect following.

One Shopper is one browser on one server, with one keep-alive connection, so a timed request
measures the server, not a TCP handshake. Forms are filled from the page itself (fill_form), so
fields the shop adds later do not break the bench.
"""

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

TEST_CARD = {"number": "4242424242424242", "expiry": "12/30", "cvc": "123"}
# What a shopper types into an empty text field of a form, by field name; a field not named
# here gets FALLBACK_TEXT (emails: "<username>@example.com"). Pre-filled and hidden values,
# checked boxes and the selected (else first non-empty) option of each select are kept as
# they are, so a field the checkout gains later does not break the bench.
FORM_VALUES = {
    **TEST_CARD,
    "full_name": "Bench Shopper",
    "name": "Bench Shopper",
    "line1": "1 Load Street",
    "address": "1 Load Street",
    "city": "Paris",
    "postal_code": "75001",
    "zip": "75001",
    "phone": "+33 1 23 45 67 89",
}
FALLBACK_TEXT = "Bench"


class ShopperError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # (lower-case name, value)
    body: str
    started: float  # time.perf_counter() just before the request was sent
    finished: float  # time.perf_counter() once the whole body was read
    arrived_at: float  # time.time() at the same moment, to compare with server timestamps

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def location_path(self) -> str:
        return urlsplit(dict(self.headers).get("location", "")).path


class _FormParser(HTMLParser):
    """Collect every <form>: its action, and each control with its type, value and options."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._current: dict | None = None
        self._select: dict | None = None
        self._textarea: dict | None = None

    def _add(self, control: dict) -> None:
        if self._current is not None:
            self._current["controls"].append(control)
            if control["type"] not in {"checkbox", "radio", "submit", "button", "image", "reset"}:
                self._current["fields"].setdefault(control["name"], control["value"])

    def handle_starttag(self, tag, attrs):
        attributes = {name: value if value is not None else "" for name, value in attrs}
        name = attributes.get("name")
        if tag == "form":
            self._current = {"action": attributes.get("action") or "", "fields": {}, "controls": []}
            self.forms.append(self._current)
        elif tag == "input" and name:
            self._add(
                {
                    "name": name,
                    "type": (attributes.get("type") or "text").lower(),
                    "value": attributes.get("value") or "",
                    "checked": "checked" in attributes,
                }
            )
        elif tag == "select" and name:
            self._select = {"name": name, "type": "select", "value": "", "options": [], "selected": None}
        elif tag == "option" and self._select is not None:
            self._select["options"].append(attributes.get("value", ""))
            if "selected" in attributes:
                self._select["selected"] = attributes.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = {"name": name, "type": "textarea", "value": ""}

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea["value"] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None
        elif tag == "select" and self._select is not None:
            select, self._select = self._select, None
            # The selected option, unless it is an empty placeholder ("Choose a country"): then
            # the first real one, as a shopper would pick.
            chosen = select["selected"] or next((option for option in select["options"] if option), "")
            select["value"] = chosen
            self._add(select)
        elif tag == "textarea" and self._textarea is not None:
            textarea, self._textarea = self._textarea, None
            textarea["value"] = textarea["value"].strip()
            self._add(textarea)


def parse_forms(html: str) -> list[dict]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def fill_form(form: dict, *, email: str, values: dict | None = None) -> dict:
    """The fields a shopper would post: what the page filled in, plus typed values for the empty ones.

    Hidden and pre-filled values are kept; a checked box is sent, an unchecked one is not; a
    select keeps its selected option (unless that is an empty placeholder: then its first real one); an empty text field gets
    its value from FORM_VALUES by name (an email field the shopper's email), else FALLBACK_TEXT.
    """
    typed = {**FORM_VALUES, **(values or {})}
    fields: dict[str, str] = {}
    for control in form["controls"]:
        name, kind, value = control["name"], control["type"], control["value"]
        if kind in {"submit", "button", "image", "reset", "file"}:
            continue
        if kind in {"checkbox", "radio"}:
            if control["checked"] and name not in fields:
                fields[name] = value or "on"
            continue
        if name in fields:
            continue
        if value == "" and kind not in {"hidden", "select"}:
            value = email if kind == "email" or name == "email" else typed.get(name, FALLBACK_TEXT)
        fields[name] = value
    return fields


def checkout_fields(html: str, shopper: "Shopper") -> dict:
    """The checkout form of this page, filled in as the shopper would (address, email, test card)."""
    form = next((form for form in parse_forms(html) if "checkout_token" in form["fields"]), None)
    if form is None or not form["fields"]["checkout_token"]:
        raise ShopperError("the checkout page has no <input name=checkout_token> with a value (templates not ready?)")
    fields = fill_form(form, email=f"{shopper.username or 'shopper'}@example.com")
    fields.setdefault("csrfmiddlewaretoken", shopper.csrf())
    return fields


class Shopper:
    """One browser on one server: a keep-alive HTTP/1.1 connection on asyncio streams, and cookies.

    A session made by the bench can be handed in (`session_key`) instead of logging in: the
    password hasher costs ~0.4 s of server CPU a login, which would swamp the figures.
    """

    def __init__(self, port: int, username: str = "", *, session_key: str = "", timeout: float = 60.0):
        self.port, self.username, self.timeout = port, username, timeout
        self.cookies: dict[str, str] = {}
        if session_key:
            self.cookies["sessionid"] = session_key
        # Django accepts a token the client makes up (32 letters and digits) as long as the
        # form carries the same one: one GET less per shopper before the first POST.
        self.cookies["csrftoken"] = secrets.token_hex(16)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    # Transport ------------------------------------------------------------------------

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def _store_cookies(self, headers: list[tuple[str, str]]) -> None:
        for name, header in headers:
            if name != "set-cookie":
                continue
            jar = SimpleCookie()
            jar.load(header)
            for cookie, morsel in jar.items():
                expired = morsel["max-age"] in {"0", 0} or (morsel["expires"] and "1970" in morsel["expires"])
                if expired or morsel.value == "":
                    self.cookies.pop(cookie, None)
                else:
                    self.cookies[cookie] = morsel.value

    async def request(self, method: str, path: str, fields: dict | None = None) -> Response:
        body = urlencode(fields, doseq=True).encode() if fields is not None else b""
        headers = {"Host": f"127.0.0.1:{self.port}", "Connection": "keep-alive", "Cookie": self.cookie_header()}
        if method == "POST":
            origin = f"http://127.0.0.1:{self.port}"
            headers.update(
                {
                    "Origin": origin,
                    "Referer": origin + path,
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Content-Length": str(len(body)),
                }
            )
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        for attempt in (1, 2):
            reused = self._writer is not None
            if self._writer is None:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self.timeout
                )
            started = time.perf_counter()
            try:
                self._writer.write(head.encode("latin-1") + body)
                status, reply_headers, text = await asyncio.wait_for(self._read_response(), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                await self.close()
                # A kept-alive connection the server had closed: nothing reached the view, retry once.
                if reused and attempt == 1:
                    continue
                raise ShopperError(f"{method} {path}: {type(error).__name__}: {error}") from error
            finished, arrived_at = time.perf_counter(), time.time()
            if dict(reply_headers).get("connection", "").lower() == "close":
                await self.close()
            self._store_cookies(reply_headers)
            return Response(status, reply_headers, text, started, finished, arrived_at)
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, list[tuple[str, str]], str]:
        reader = self._reader
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        headers: list[tuple[str, str]] = []
        while (line := await reader.readline()) not in {b"\r\n", b"\n", b""}:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        found = dict(headers)
        if "content-length" in found:
            body = await reader.readexactly(int(found["content-length"]))
        elif found.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        else:
            body = await reader.read()
            await self.close()
        return status, headers, body.decode("utf-8", errors="replace")

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post(self, path: str, fields: dict) -> Response:
        return await self.request("POST", path, fields)

    def csrf(self) -> str:
        return self.cookies["csrftoken"]

    # Shop actions ---------------------------------------------------------------------

    async def log_in(self, password: str) -> None:
        """Log in through the login form (a real login: it costs the password hasher)."""
        page = await self.get("/accounts/login/")
        if page.status != 200:
            raise ShopperError(f"GET /accounts/login/ answered {page.status}")
        form = next((form for form in parse_forms(page.body) if "password" in form["fields"]), None)
        fields = {**(form["fields"] if form else {}), "username": self.username, "password": password}
        fields["csrfmiddlewaretoken"] = self.csrf()
        done = await self.post("/accounts/login/", fields)
        if done.status != 302 or "sessionid" not in self.cookies:
            raise ShopperError(f"login of {self.username} answered {done.status} (expected 302 and a session)")

    async def add_to_cart(self, product_id: int, quantity: int = 1) -> None:
        done = await self.post(
            "/cart/add/", {"product": product_id, "quantity": quantity, "csrfmiddlewaretoken": self.csrf()}
        )
        if done.status != 302:
            raise ShopperError(f"POST /cart/add/ answered {done.status} for {self.username}")

    async def open_checkout(self) -> dict:
        """GET /checkout/ and return its form filled in (token, address, email, test card)."""
        page = await self.get("/checkout/")
        if page.status != 200:
            raise ShopperError(
                f"GET /checkout/ answered {page.status} for {self.username} (Location {page.location_path!r})"
            )
        return checkout_fields(page.body, self)

    async def prepare_checkout(self, product_id: int) -> dict:
        await self.add_to_cart(product_id)
        return await self.open_checkout()

    async def pay(self, fields: dict) -> Response:
        """POST the checkout form; the caller times it. Raise unless it is the 302 to the order."""
        done = await self.post("/checkout/", fields)
        if not paid(done):
            raise ShopperError(
                f"POST /checkout/ answered {done.status} (Location {done.location_path!r}) for {self.username}"
            )
        return done


def paid(response: Response) -> bool:
    """Whether a checkout POST ended at the order's page (the 302 a successful payment answers)."""
    return response.status == 302 and response.location_path.startswith("/orders/")

"""Live signals that are not notifications: a cart's lines as stock moves, and the staff feed.

Nothing here is stored. A cart socket learns its lines' current state when it connects
(`hello`), so a change made while it was away is never lost, only not pushed; the staff
feed is a stream of toasts for staff who are watching now.

Stock fan-out: one stock change (a sale, a return, a staff movement) may touch thousands of
carts. It runs after commit, in the background (on the server's loop), reads every affected
cart line in ONE query, builds one frame a cart and sends them in concurrent batches, each
send bounded by the dispatch timeout. A lost frame costs nothing lasting: the cart page and
the checkout check stock again on their own.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse

from shop.models import LOW_STOCK_THRESHOLD, CartLine, Order, StockMovement
from shop.money import format_money

from . import services

logger = logging.getLogger(__name__)

STAFF_GROUP = "live.staff"
# A fan-out sends FAN_OUT_BATCH group sends at once, then pauses FAN_OUT_PAUSE seconds. Each
# send wakes its sockets' consumers on this server's loop, and their deliveries are most of
# the work (about 1 ms a socket): sent all at once, 1,000 carts held a concurrent checkout's
# response for 1.1-1.5 s (in-memory layer, 2 cores); in steps of 20 it answered in about 0.2 s
# and the last cart heard about as soon (bench/cart_fanout.py). It also bounds the Redis
# connections a fan-out holds at once.
FAN_OUT_BATCH = 20
FAN_OUT_PAUSE = 0.005


def cart_group(cart_id: int) -> str:
    """The group of every socket open on one cart: built from the cart's pk, never from client input."""
    return f"live.cart.{int(cart_id)}"


# Cart lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StockChange:
    """One product's stock moved from `stock_before`; `skip_user_id`'s cart is not warned."""

    product_id: int
    stock_before: int
    # The shopper of the order that moved the stock (a sale, or its units coming back): their
    # own checkout is what changed it, their page says so already.
    skip_user_id: int | None = None


def stock_changes(movements: Iterable[StockMovement]) -> list[StockChange]:
    """Describe the movements of one stock change for the fan-out (no query: all is in hand)."""
    return [
        StockChange(
            product_id=movement.product_id,
            stock_before=movement.stock_after - movement.delta,
            skip_user_id=movement.order.user_id if movement.order is not None else None,
        )
        for movement in movements
    ]


def line_state(*, quantity: int, stock: int, is_active: bool = True) -> str:
    """Whether a cart line of `quantity` units can be had now: ok, short, sold_out or unavailable."""
    if not is_active:
        return "unavailable"
    if stock <= 0:
        return "sold_out"
    if quantity > stock:
        return "short"
    return "ok"


def _units_in_cart(quantity: int) -> str:
    return f"you have {quantity} in your cart"


def line_frame(*, product_id: int, slug: str, name: str, quantity: int, stock: int, is_active: bool = True) -> dict:
    """One line of a `hello` or `lines` frame: the line's state and what to tell the shopper."""
    state = line_state(quantity=quantity, stock=stock, is_active=is_active)
    message = {
        "unavailable": f"{name} is no longer available - {_units_in_cart(quantity)}.",
        "sold_out": f"{name} is sold out - {_units_in_cart(quantity)}.",
        "short": f"Only {stock} left of {name} - {_units_in_cart(quantity)}.",
        "ok": f"{name} is available again for the {quantity} in your cart.",
    }[state]
    if state in ("unavailable", "sold_out"):
        stock_class, stock_label = "out", "sold out"
    elif stock <= LOW_STOCK_THRESHOLD:
        stock_class, stock_label = "low", f"only {stock} left"
    else:
        stock_class, stock_label = "in", "in stock"
    return {
        "product": product_id,
        "slug": slug,
        "name": name,
        "in_cart": quantity,
        "available": max(stock, 0) if is_active else 0,
        "state": state,
        "message": message,
        "stock_class": stock_class,
        "stock_label": stock_label,
    }


_LINE_FIELDS = (
    "cart_id",
    "product_id",
    "quantity",
    "product__slug",
    "product__name",
    "product__stock",
    "product__is_active",
)


def _frame_of(row: tuple) -> tuple[int, dict]:
    cart_id, product_id, quantity, slug, name, stock, is_active = row
    return cart_id, line_frame(
        product_id=product_id, slug=slug, name=name, quantity=quantity, stock=stock, is_active=is_active
    )


def affected_lines(changes: Iterable[StockChange]):
    """The cart lines a stock change may have changed the state of, with current stock: one query.

    A line is touched when it was short before the change or is short now (its quantity is
    above the lower of the two): it just became short, got shorter, or can be had again.
    The current stock is read in the query itself, so a later change is never undone by an
    older frame's numbers.
    """
    condition = Q()
    for change in changes:
        touched = Q(product_id=change.product_id) & (
            Q(quantity__gt=change.stock_before) | Q(quantity__gt=F("product__stock"))
        )
        if change.skip_user_id is not None:
            touched &= ~Q(cart__user_id=change.skip_user_id)
        condition |= touched
    if not condition:
        return CartLine.objects.none()
    return CartLine.objects.filter(condition).values_list(*_LINE_FIELDS)


def cart_line_frames(cart_id: int) -> list[dict]:
    """Every line of one cart with its current state (a cart socket's `hello`)."""
    rows = CartLine.objects.filter(cart_id=cart_id).order_by("product__name").values_list(*_LINE_FIELDS)
    return [_frame_of(row)[1] for row in rows]


async def afan_out_stock(changes: list[StockChange]) -> int:
    """Tell every cart whose lines a stock change touched; return how many carts were sent a frame."""
    started = time.monotonic()
    by_cart: dict[int, list[dict]] = {}
    async for row in affected_lines(changes):
        cart_id, frame = _frame_of(row)
        by_cart.setdefault(cart_id, []).append(frame)
    read = time.monotonic()
    messages = [(cart_group(cart_id), {"type": "cart.lines", "lines": lines}) for cart_id, lines in by_cart.items()]
    failed = await asend_many(messages, what="cart signal")
    if messages:
        logger.info(
            "Stock change: %d cart(s) told in %.0f ms (query %.0f ms, %d failed)",
            len(messages),
            (time.monotonic() - started) * 1000,
            (read - started) * 1000,
            failed,
        )
    return len(messages)


async def asend_many(messages: list[tuple[str, dict]], *, what: str) -> int:
    """Send each (group, message) within the dispatch timeout, FAN_OUT_BATCH at a time; return the failures.

    Failures are counted and logged in one line: with Redis down a fan-out to a thousand
    carts must not write a thousand warnings.
    """
    layer = get_channel_layer()
    timeout = settings.NOTIFICATIONS_DISPATCH_TIMEOUT
    failures: list[BaseException] = []

    async def send(group: str, message: dict) -> None:
        try:
            await asyncio.wait_for(layer.group_send(group, message), timeout=timeout)
        except Exception as error:  # Redis down, frozen or full; asyncio.TimeoutError included.
            failures.append(error)

    for start in range(0, len(messages), FAN_OUT_BATCH):
        if start:
            await asyncio.sleep(FAN_OUT_PAUSE)
        await asyncio.gather(*(send(group, message) for group, message in messages[start : start + FAN_OUT_BATCH]))
    if failures:
        logger.warning(
            "%d of %d %s pushes failed (first: %r); pages see the state on their next load",
            len(failures),
            len(messages),
            what,
            failures[0],
        )
    return len(failures)


def fan_out_after_commit(changes: list[StockChange]) -> None:
    """Once the stock change commits, warn the carts it touched, off the request path."""
    transaction.on_commit(lambda: services.run_in_background(lambda: afan_out_stock(changes)), robust=True)


# Staff feed ---------------------------------------------------------------------------------


def _customer(order: Order, *, may_query: bool = True) -> str:
    # payment_overdue comes from async code, where an unloaded user cannot be queried.
    if may_query or Order.user.is_cached(order):
        return order.user.get_username()
    return f"customer #{order.user_id}"


def _admin_url(order: Order) -> str:
    return reverse("admin:shop_order_change", args=[order.pk])


def order_paid_event(order: Order) -> dict:
    """The staff feed's frame for an order that was just paid."""
    amount = format_money(order.total, order.currency)
    customer = _customer(order)
    return {
        "type": "order_paid",
        "number": order.number,
        "total": str(order.total),
        "currency": order.currency,
        "amount": amount,
        "customer": customer,
        "title": f"New order {order.number}: {amount}",
        "detail": f"Paid by {customer}.",
        "url": _admin_url(order),
    }


PAYMENT_ATTENTION_TEXTS = {
    "overdue": (
        "Payment of order {number} is overdue",
        "The bank did not answer {customer}'s payment of {amount} in time; the order stays pending "
        "until the bank answers or reconciliation settles it.",
    ),
    "released": (
        "Order {number} was not paid",
        "Reconciliation found no charge for {customer}'s payment of {amount}: the stock went back "
        "and the order is cancelled.",
    ),
}


def payment_attention_event(order: Order, *, reason: str, may_query: bool = True) -> dict:
    """The staff feed's frame for a payment needing attention: `overdue` or `released`.

    From async code pass may_query=False: the customer is named only if the order has its user loaded.
    """
    amount = format_money(order.total, order.currency)
    values = {"number": order.number, "customer": _customer(order, may_query=may_query), "amount": amount}
    title, detail = (text.format(**values) for text in PAYMENT_ATTENTION_TEXTS[reason])
    return {
        "type": "payment_attention",
        "reason": reason,
        "number": order.number,
        "amount": amount,
        "customer": values["customer"],
        "title": title,
        "detail": detail,
        "url": _admin_url(order),
    }


async def apush_staff(event: dict) -> bool:
    """Send one event to every staff socket; False (logged) if the layer failed."""
    return not await asend_many([(STAFF_GROUP, {"type": "staff.event", "event": event})], what="staff feed")


def push_staff(event: dict, *, after_commit: bool = True) -> None:
    """Push a staff event in the background, once the current transaction commits (or at once)."""
    start: Callable[[], None] = lambda: services.run_in_background(lambda: apush_staff(event))  # noqa: E731
    if after_commit:
        transaction.on_commit(start, robust=True)
    else:
        start()

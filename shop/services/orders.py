"""The order pipeline: which status may follow which, and what each move does to stock and money."""

import logging
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from ..models import Order, OrderEvent, Payment
from ..money import format_money
from ..payments import PaymentError, get_gateway
from ..signals import order_status_changed, orders_status_changed
from .errors import InvalidTransition
from .stock import return_order_stock

logger = logging.getLogger(__name__)


def record_status(*, order: Order, status: str, actor=None, message: str = "") -> str:
    previous = order.status
    order.status = status
    order.save(update_fields=["status", "updated_at"])
    OrderEvent.objects.create(order=order, from_status=previous, to_status=status, actor=actor, message=message)
    return previous


@dataclass(frozen=True)
class Transition:
    """A move of an order to status `to`: from where, what it undoes, and what the shopper is told.

    The one table below drives the services (which moves are allowed, when money and stock
    go back), the admin (its status choices and actions) and the notifications' texts.
    """

    to: str
    sources: frozenset[str]
    admin_action: str
    # "{number}", "{amount}" (the total, formatted), "{total}" and "{currency}" are filled in; an entry per previous status may
    # replace the default (None) for moves that mean something else from there.
    shopper_texts: dict[str | None, tuple[str, str]]
    refunds_from: frozenset[str] = frozenset()
    returns_stock_from: frozenset[str] = frozenset()

    def shopper_message(self, *, order: Order, previous_status: str) -> tuple[str, str]:
        """Return the (title, body) telling the shopper about this move of `order`."""
        title, body = self.shopper_texts.get(previous_status, self.shopper_texts[None])
        values = {
            "number": order.number,
            "amount": format_money(order.total, order.currency),
            "total": order.total,
            "currency": order.currency,
        }
        return title.format(**values), body.format(**values)


_S = Order.Status
ORDER_TRANSITIONS: dict[str, Transition] = {
    transition.to: transition
    for transition in [
        Transition(
            to=_S.SHIPPED,
            sources=frozenset({_S.PAID}),
            admin_action="Mark selected orders shipped",
            shopper_texts={None: ("Order {number} has shipped", "It is on its way to you.")},
        ),
        Transition(
            to=_S.DELIVERED,
            sources=frozenset({_S.SHIPPED}),
            admin_action="Mark selected orders delivered",
            shopper_texts={None: ("Order {number} was delivered", "Enjoy! Thank you for shopping with us.")},
        ),
        Transition(
            to=_S.CANCELLED,
            sources=frozenset({_S.PENDING, _S.PAID}),
            admin_action="Cancel selected orders (returns stock and money)",
            shopper_texts={
                None: ("Order {number} was cancelled", "Any payment has been refunded to your card."),
                # The bank never took the money (a payment that timed out, settled by reconciliation).
                _S.PENDING: ("Order {number} was not paid", "Your payment did not go through, so nothing was charged."),
            },
            refunds_from=frozenset({_S.PAID}),
            returns_stock_from=frozenset({_S.PENDING, _S.PAID}),
        ),
        Transition(
            to=_S.REFUNDED,
            sources=frozenset({_S.PAID, _S.SHIPPED}),
            admin_action="Refund selected orders",
            shopper_texts={None: ("Order {number} was refunded", "{amount} is on its way back to your card.")},
            refunds_from=frozenset({_S.PAID, _S.SHIPPED}),
            # A shipped order's goods are with the shopper: only the money goes back.
            returns_stock_from=frozenset({_S.PAID}),
        ),
    ]
}

# Where each status may go: derived from the table, for forms and checks.
ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    status: {transition.to for transition in ORDER_TRANSITIONS.values() if status in transition.sources}
    for status in Order.Status.values
}


def transition_problem(*, order: Order, status: str) -> str | None:
    """Say why `order` cannot move to `status`, or return None if it can."""
    if status == Order.Status.PAID:
        return "An order becomes paid only when the bank captures its payment."
    if status not in ALLOWED_TRANSITIONS.get(order.status, set()):
        return (
            f"Order {order.number} is {order.get_status_display().lower()} "
            f"and cannot be marked {Order.Status(status).label.lower()}."
        )
    return None


def change_order_status(*, order: Order, status: str, actor=None, message: str = "") -> Order:
    """Move an order along its pipeline, returning stock and money where that applies.

    Cancelling returns the stock (and the money, if paid). Refunding a paid order that has
    not shipped returns the stock too; refunding a shipped one returns the money only.
    """
    if status not in Order.Status.values:
        raise InvalidTransition(f"{status!r} is not an order status.")
    with transaction.atomic():
        # The order row stays locked through the refund: a concurrent change (another staff
        # member shipping it) waits, so money never goes back for a move that is then refused.
        # Only the order is locked while the bank answers, never stock; the products are
        # locked after it, in the order -> products order every other path uses.
        order = Order.objects.select_for_update().get(pk=order.pk)
        if problem := transition_problem(order=order, status=status):
            raise InvalidTransition(problem)
        transition = ORDER_TRANSITIONS[status]
        if order.status in transition.refunds_from:
            # Idempotent at the bank (keyed by order): a retry after a failure refunds once.
            refund_order_payment(order=order)
        if order.status in transition.returns_stock_from:
            return_order_stock(order, actor=actor)
        previous = record_status(order=order, status=status, actor=actor, message=message)
        order_status_changed.send(sender=Order, order=order, previous_status=previous, actor=actor)
    logger.info("Order %s: %s -> %s by %s", order.number, previous, status, actor or "the system")
    return order


@dataclass
class BulkStatusChange:
    """What change_orders_status() did: the orders moved, and why the others were not."""

    changed: list[Order]
    problems: list[str]


def change_orders_status(*, order_ids, status: str, actor=None, message: str = "") -> BulkStatusChange:
    """Move many orders to `status` at once (the admin's bulk actions).

    Moves that touch neither money nor stock (shipping, delivering) are made together: one
    transaction, a few statements whatever the number of orders, and one signal for all of
    them, so their notifications are written in bulk and pushed together once it commits.
    (One transaction an order took 98 s for 5000 orders, and the shoppers heard over those
    98 s.) A move that refunds or returns stock goes one order per transaction through
    change_order_status(), since it waits for the bank. Orders that cannot make the move are
    left alone and said why.
    """
    if status not in Order.Status.values:
        raise InvalidTransition(f"{status!r} is not an order status.")
    transition = ORDER_TRANSITIONS.get(status)
    changed: list[Order] = []
    problems: list[str] = []
    one_by_one: list[Order] = []
    with transaction.atomic():
        # Rows locked in pk order, as every path that locks several orders does; the users are
        # read with them (the notifications need their addresses) but not locked.
        locked = list(
            Order.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(pk__in=list(order_ids))
            .order_by("pk")
        )
        for order in locked:
            if problem := transition_problem(order=order, status=status):
                problems.append(problem)
            elif order.status in transition.refunds_from | transition.returns_stock_from:
                one_by_one.append(order)
            else:
                changed.append(order)
        if changed:
            now = timezone.now()
            previous = {order.pk: order.status for order in changed}
            Order.objects.filter(pk__in=previous).update(status=status, updated_at=now)
            for order in changed:
                order.status, order.updated_at = status, now
            OrderEvent.objects.bulk_create(
                OrderEvent(order=order, from_status=previous[order.pk], to_status=status, actor=actor, message=message)
                for order in changed
            )
            orders_status_changed.send(
                sender=Order, changes=[(order, previous[order.pk]) for order in changed], actor=actor
            )
    if changed:
        logger.info("%d orders -> %s by %s", len(changed), status, actor or "the system")
    for order in one_by_one:
        try:
            changed.append(change_order_status(order=order, status=status, actor=actor, message=message))
        except (InvalidTransition, PaymentError) as error:
            problems.append(error.message)
    return BulkStatusChange(changed=changed, problems=problems)


def refund_order_payment(*, order: Order) -> Payment | None:
    """Refund an order's captured charge at the bank, once, and record it."""
    charge = order.payments.filter(kind=Payment.Kind.CHARGE, status=Payment.Status.CAPTURED).first()
    if charge is None:
        return None
    key = f"refund-{order.number}"
    if existing := Payment.objects.filter(idempotency_key=key).first():
        return existing
    refund = async_to_sync(get_gateway().refund)(
        charge_reference=charge.reference, amount=charge.amount, currency=charge.currency, idempotency_key=key
    )
    payment, _ = Payment.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "order": order,
            "user_id": order.user_id,
            "kind": Payment.Kind.REFUND,
            "status": Payment.Status.REFUNDED,
            "amount": refund.amount,
            "currency": refund.currency,
            "reference": refund.reference,
            "card_last4": charge.card_last4,
        },
    )
    return payment


# The shopper's side --------------------------------------------------------------------------

# What a shopper may do to their own order: cancel it while it is paid and not yet shipped.
SHOPPER_CANCELLABLE = frozenset({Order.Status.PAID})


def shopper_cancel_problem(*, order: Order) -> str | None:
    """Say why the shopper cannot cancel `order` themselves, or return None if they can."""
    if order.status in SHOPPER_CANCELLABLE:
        return None
    if order.status == Order.Status.PENDING:
        return f"Order {order.number} is still being paid. You can cancel it once the bank has confirmed it."
    if order.status in (Order.Status.SHIPPED, Order.Status.DELIVERED):
        return (
            f"Order {order.number} has already shipped, so it can no longer be cancelled. "
            "Please contact us to return it."
        )
    return f"Order {order.number} is {order.get_status_display().lower()} and cannot be cancelled."


def cancel_order_for_shopper(*, order: Order, user) -> Order:
    """Cancel a shopper's own paid, unshipped order: the money and the stock go back, as when staff cancel.

    The status is checked again under the order's row lock, so an order staff ship at the
    same moment is either cancelled first or refused, never both.
    """
    if order.user_id != user.pk:
        raise InvalidTransition("This is not your order.")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if problem := shopper_cancel_problem(order=locked):
            raise InvalidTransition(problem)
        return change_order_status(
            order=locked, status=Order.Status.CANCELLED, actor=user, message="Cancelled by the shopper."
        )


def record_receipt_sent(*, order_id: int, sent_to: str, sent_at: datetime | None = None) -> None:
    """Note that the order's receipt went out to `sent_to` (called by the email task once the server took it)."""
    Order.objects.filter(pk=order_id).update(receipt_sent_to=sent_to, receipt_sent_at=sent_at or timezone.now())


@dataclass(frozen=True)
class TimelineEntry:
    """One line of an order's history as the shopper reads it."""

    status: str
    title: str
    detail: str
    at: datetime
    by: str  # "you", "our team" or "" (the shop itself)


# Status moves in the shopper's words; internal messages (charge references, stock notes) stay in the admin.
_TIMELINE_TEXTS: dict[tuple[str | None, str], tuple[str, str]] = {
    (None, _S.PENDING): ("Order placed", ""),  # While it is pending, a notice above says the bank is being asked.
    (None, _S.PAID): ("Payment received", "Thank you! We are preparing your order."),
    (None, _S.SHIPPED): ("Shipped", "Your order is on its way."),
    (None, _S.DELIVERED): ("Delivered", "Enjoy!"),
    (_S.PENDING, _S.CANCELLED): ("Not paid", "The payment did not go through, so nothing was charged."),
    (None, _S.CANCELLED): ("Cancelled", "Your payment was refunded to your card."),
    (_S.SHIPPED, _S.REFUNDED): ("Refunded", "Your payment is on its way back to your card."),
    (None, _S.REFUNDED): ("Refunded", "Your payment was refunded to your card."),
}


def order_timeline(*, order: Order) -> list[TimelineEntry]:
    """Return the order's history, oldest first, in words meant for the shopper."""
    entries = []
    for event in order.events.all():
        title, detail = _TIMELINE_TEXTS.get(
            (event.from_status, event.to_status),
            _TIMELINE_TEXTS.get((None, event.to_status), (event.get_to_status_display(), "")),
        )
        if event.actor_id is None:
            by = ""
        else:
            by = "you" if event.actor_id == order.user_id else "our team"
        entries.append(TimelineEntry(status=event.to_status, title=title, detail=detail, at=event.created_at, by=by))
    return entries

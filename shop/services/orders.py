"""The order pipeline: which status may follow which, and what each move does to stock and money."""

import logging
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.db import transaction

from ..models import Order, OrderEvent, Payment
from ..payments import get_gateway
from ..signals import order_status_changed
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
    # "{number}", "{total}" and "{currency}" are filled in; an entry per previous status may
    # replace the default (None) for moves that mean something else from there.
    shopper_texts: dict[str | None, tuple[str, str]]
    refunds_from: frozenset[str] = frozenset()
    returns_stock_from: frozenset[str] = frozenset()

    def shopper_message(self, *, order: Order, previous_status: str) -> tuple[str, str]:
        """Return the (title, body) telling the shopper about this move of `order`."""
        title, body = self.shopper_texts.get(previous_status, self.shopper_texts[None])
        values = {"number": order.number, "total": order.total, "currency": order.currency}
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
            shopper_texts={
                None: ("Order {number} was refunded", "{total} {currency} is on its way back to your card.")
            },
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

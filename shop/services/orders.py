"""The order pipeline: which status may follow which, and what each move does to stock and money."""

import logging

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


ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    Order.Status.PENDING: {Order.Status.CANCELLED},
    Order.Status.PAID: {Order.Status.SHIPPED, Order.Status.CANCELLED, Order.Status.REFUNDED},
    Order.Status.SHIPPED: {Order.Status.DELIVERED, Order.Status.REFUNDED},
    Order.Status.DELIVERED: set(),
    Order.Status.CANCELLED: set(),
    Order.Status.REFUNDED: set(),
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
        if order.status in {Order.Status.PAID, Order.Status.SHIPPED} and status in {
            Order.Status.CANCELLED,
            Order.Status.REFUNDED,
        }:
            # Idempotent at the bank (keyed by order): a retry after a failure refunds once.
            refund_order_payment(order=order)
        if order.status in {Order.Status.PENDING, Order.Status.PAID} and status in {
            Order.Status.CANCELLED,
            Order.Status.REFUNDED,
        }:
            return_order_stock(order)
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

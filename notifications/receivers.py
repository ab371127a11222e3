"""Receivers of the shop's domain signals and of auth's logout, connected in NotificationsConfig.ready().

Shop signals arrive inside the transaction of the order change, so the notification row
commits or rolls back with it, and so does the confirmation email's task; the push goes
out only after commit, the email when the task worker runs the task.
"""

from shop.models import Order
from shop.money import format_money
from shop.services import ORDER_TRANSITIONS

from . import alerts, live, services
from .models import Notification


def notify_order_placed(sender, order, **kwargs):
    services.notify(
        recipient=order.user,
        kind=Notification.Kind.ORDER_PLACED,
        title=f"Order {order.number} placed",
        body=f"We received your payment of {format_money(order.total, order.currency)}. We will tell you when it ships.",
        url=order.get_absolute_url(),
        order=order,
    )
    if order.receipt_email:
        # A task row in this same transaction: the email commits or rolls back with the order.
        services.queue_order_confirmation(order_id=order.pk)


def notify_order_status_changed(sender, order, previous_status, actor=None, **kwargs):
    if draft := _status_change_draft(order, previous_status):
        services.notify_many([draft])


def notify_orders_status_changed(sender, changes, actor=None, **kwargs):
    """An admin bulk action: every shopper told, the rows written in bulk and pushed together."""
    services.notify_many(
        [draft for order, previous in changes if (draft := _status_change_draft(order, previous)) is not None]
    )


def _status_change_draft(order, previous_status) -> services.Draft | None:
    transition = ORDER_TRANSITIONS.get(order.status)
    if transition is None:
        return None
    # The texts live with the shop's table of transitions: one place says what each move means.
    title, body = transition.shopper_message(order=order, previous_status=previous_status)
    return services.Draft(
        recipient=order.user,
        kind=Notification.Kind(f"order_{order.status}"),
        title=title,
        body=body,
        url=order.get_absolute_url(),
        order=order,
    )


def close_sockets_on_logout(sender, request, user, **kwargs):
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        services.close_session_sockets(session_key)


def recheck_sockets_on_user_change(sender, instance, created=False, raw=False, update_fields=None, **kwargs):
    """A saved user may have a new password or be deactivated: their sockets check their sessions."""
    if created or raw:
        return  # A new user has no socket; fixtures being loaded are not a change.
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # Every login saves last_login alone: nothing about existing sessions changed.
    services.recheck_user_sockets(instance.pk)


# Live signals (notifications.live): carts, back in stock, the staff feed ----------------------


def announce_stock_change(sender, movements, **kwargs):
    """Warn the carts a stock change touched (after commit, in the background); answer restock requests.

    A movement up from zero is a restock: the shoppers who asked are told in this transaction.
    """
    live.fan_out_after_commit(live.stock_changes(movements))
    restocked = {
        movement.product_id: movement.stock_after
        for movement in movements
        if movement.delta > 0 and movement.stock_after == movement.delta
    }
    if restocked:
        alerts.tell_restocked(stock=restocked)


def tell_staff_order_paid(sender, order, **kwargs):
    live.push_staff(live.order_paid_event(order))


def tell_staff_payment_overdue(sender, order, **kwargs):
    # Sent from async code, outside any transaction: push now, and query nothing.
    live.push_staff(live.payment_attention_event(order, reason="overdue", may_query=False), after_commit=False)


def tell_staff_payment_released(sender, order, previous_status, actor=None, **kwargs):
    """A pending order cancelled by the system (reconciliation, or a late refusal) needs staff's eye."""
    if previous_status == Order.Status.PENDING and order.status == Order.Status.CANCELLED and actor is None:
        live.push_staff(live.payment_attention_event(order, reason="released"))

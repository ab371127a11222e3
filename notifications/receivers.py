"""Receivers of the shop's domain signals and of auth's logout, connected in NotificationsConfig.ready().

Shop signals arrive inside the transaction of the order change, so the notification row
commits or rolls back with it, and so does the confirmation email's task; the push goes
out only after commit, the email when the task worker runs the task.
"""

from . import services
from .models import Notification

STATUS_MESSAGES = {
    "shipped": (Notification.Kind.ORDER_SHIPPED, "Order {number} has shipped", "It is on its way to you."),
    "delivered": (
        Notification.Kind.ORDER_DELIVERED,
        "Order {number} was delivered",
        "Enjoy! Thank you for shopping with us.",
    ),
    "cancelled": (
        Notification.Kind.ORDER_CANCELLED,
        "Order {number} was cancelled",
        "Any payment has been refunded to your card.",
    ),
    "refunded": (
        Notification.Kind.ORDER_REFUNDED,
        "Order {number} was refunded",
        "{total} {currency} is on its way back to your card.",
    ),
}


def notify_order_placed(sender, order, **kwargs):
    services.notify(
        recipient=order.user,
        kind=Notification.Kind.ORDER_PLACED,
        title=f"Order {order.number} placed",
        body=f"We received your payment of {order.total} {order.currency}. We will tell you when it ships.",
        url=order.get_absolute_url(),
    )
    if order.user.email:
        # A task row in this same transaction: the email commits or rolls back with the order.
        services.queue_order_confirmation(order_id=order.pk)


def notify_order_status_changed(sender, order, previous_status, actor=None, **kwargs):
    if order.status not in STATUS_MESSAGES:
        return
    kind, title, body = STATUS_MESSAGES[order.status]
    if previous_status == "pending":
        # The bank never took the money (a payment that timed out, settled by reconciliation).
        title, body = "Order {number} was not paid", "Your payment did not go through, so nothing was charged."
    values = {"number": order.number, "total": order.total, "currency": order.currency}
    services.notify(
        recipient=order.user,
        kind=kind,
        title=title.format(**values),
        body=body.format(**values),
        url=order.get_absolute_url(),
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

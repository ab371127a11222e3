"""Receivers of the shop's domain signals and of auth's logout, connected in NotificationsConfig.ready().

Shop signals arrive inside the transaction of the order change, so the notification row
commits or rolls back with it, and so does the confirmation email's task; the push goes
out only after commit, the email when the task worker runs the task.
"""

from shop.money import format_money
from shop.services import ORDER_TRANSITIONS

from . import services
from .models import Notification


def notify_order_placed(sender, order, **kwargs):
    services.notify(
        recipient=order.user,
        kind=Notification.Kind.ORDER_PLACED,
        title=f"Order {order.number} placed",
        body=f"We received your payment of {format_money(order.total, order.currency)}. We will tell you when it ships.",
        url=order.get_absolute_url(),
    )
    if order.receipt_email:
        # A task row in this same transaction: the email commits or rolls back with the order.
        services.queue_order_confirmation(order_id=order.pk)


def notify_order_status_changed(sender, order, previous_status, actor=None, **kwargs):
    transition = ORDER_TRANSITIONS.get(order.status)
    if transition is None:
        return
    # The texts live with the shop's table of transitions: one place says what each move means.
    title, body = transition.shopper_message(order=order, previous_status=previous_status)
    services.notify(
        recipient=order.user,
        kind=Notification.Kind(f"order_{order.status}"),
        title=title,
        body=body,
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

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        from django.conf import settings
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save

        from shop.signals import (
            order_placed,
            order_status_changed,
            orders_status_changed,
            payment_overdue,
            stock_changed,
        )

        from . import receivers

        order_placed.connect(receivers.notify_order_placed, dispatch_uid="notifications.order_placed")
        order_status_changed.connect(receivers.notify_order_status_changed, dispatch_uid="notifications.order_status")
        orders_status_changed.connect(
            receivers.notify_orders_status_changed, dispatch_uid="notifications.orders_status"
        )
        user_logged_out.connect(receivers.close_sockets_on_logout, dispatch_uid="notifications.close_on_logout")
        stock_changed.connect(receivers.announce_stock_change, dispatch_uid="notifications.stock_changed")
        order_placed.connect(receivers.tell_staff_order_paid, dispatch_uid="notifications.staff_order_paid")
        payment_overdue.connect(receivers.tell_staff_payment_overdue, dispatch_uid="notifications.staff_overdue")
        order_status_changed.connect(
            receivers.tell_staff_payment_released, dispatch_uid="notifications.staff_payment_released"
        )
        post_save.connect(
            receivers.recheck_sockets_on_user_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="notifications.recheck_on_user_change",
        )

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        from django.conf import settings
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save

        from shop.signals import order_placed, order_status_changed

        from . import receivers

        order_placed.connect(receivers.notify_order_placed, dispatch_uid="notifications.order_placed")
        order_status_changed.connect(receivers.notify_order_status_changed, dispatch_uid="notifications.order_status")
        user_logged_out.connect(receivers.close_sockets_on_logout, dispatch_uid="notifications.close_on_logout")
        post_save.connect(
            receivers.recheck_sockets_on_user_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="notifications.recheck_on_user_change",
        )

from django.conf import settings
from django.db import models
from django.db.models import Q


class NotificationQuerySet(models.QuerySet):
    def for_user(self, user_or_id):
        return self.filter(recipient=user_or_id)

    def unread(self):
        return self.filter(read_at__isnull=True)

    def undelivered(self):
        return self.filter(delivered_at__isnull=True)


class Notification(models.Model):
    """A message to one user. Written in the transaction of the change it tells about:
    the row is the source of truth, the WebSocket push only a nudge to come and read it.
    """

    class Kind(models.TextChoices):
        ORDER_PLACED = "order_placed", "Order placed"
        ORDER_SHIPPED = "order_shipped", "Order shipped"
        ORDER_DELIVERED = "order_delivered", "Order delivered"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"
        ORDER_REFUNDED = "order_refunded", "Order refunded"

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="When a browser acknowledged it.")
    read_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-pk"]
        indexes = [
            # Replay after an id, the inbox (newest first) and the header's newest id.
            models.Index(fields=["recipient", "id"], name="notification_recipient_id"),
            # The unread count on every page.
            models.Index(fields=["recipient"], condition=Q(read_at__isnull=True), name="notification_unread"),
        ]

    def __str__(self):
        return f"{self.title} (to {self.recipient})"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None

    def to_message(self) -> dict:
        """The `notification` frame of the WebSocket protocol (also the API's list items)."""
        return {
            "type": "notification",
            "id": self.pk,
            "kind": self.kind,
            "title": self.title,
            "body": self.body,
            "url": self.url,
            "created_at": self.created_at.isoformat(),
            "read": self.is_read,
        }

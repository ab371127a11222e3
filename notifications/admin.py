from django.contrib import admin, messages
from django.db.models import Exists, OuterRef

from shop import admin as shop_admin
from shop.models import Order

from . import services
from .models import Notification, NotificationPreference, StockAlert


class TimestampSetFilter(admin.SimpleListFilter):
    """Filter on whether a timestamp field is set, with labels for both answers."""

    field = ""
    labels = ("", "")

    def lookups(self, request, model_admin):
        return [("yes", self.labels[0]), ("no", self.labels[1])]

    def queryset(self, request, queryset):
        if self.value() in {"yes", "no"}:
            return queryset.filter(**{f"{self.field}__isnull": self.value() == "no"})
        return queryset


class DeliveredFilter(TimestampSetFilter):
    title = parameter_name = "delivered"
    field, labels = "delivered_at", ("Delivered", "Not delivered")


class ReadFilter(TimestampSetFilter):
    title = parameter_name = "read"
    field, labels = "read_at", ("Read", "Unread")


@admin.action(description="Resend selected notifications to the recipients' open pages")
def resend(modeladmin, request, queryset):
    count = 0
    for notification in queryset.select_related("recipient"):
        services.dispatch(notification)
        count += 1
    modeladmin.message_user(request, f"{count} notification(s) queued for delivery.", messages.SUCCESS)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "recipient", "kind", "title", "order", "pushed_at", "delivered_at", "read_at"]
    list_filter = ["kind", DeliveredFilter, ReadFilter, "created_at"]
    search_fields = ["title", "body", "recipient__username", "recipient__email", "order__number"]
    readonly_fields = [
        "recipient",
        "kind",
        "title",
        "body",
        "url",
        "order",
        "created_at",
        "pushed_at",
        "delivered_at",
        "read_at",
        "emailed_at",
    ]
    list_select_related = ["recipient", "order"]
    actions = [resend]

    def has_add_permission(self, request):
        return False


# Delivery receipts on the order's admin page -------------------------------------------------------


class NotificationReceiptInline(shop_admin.ReadOnlyInline):
    """Each notification of the order: when it was written, pushed, shown (acked) by a browser, read, emailed."""

    model = Notification
    fk_name = "order"
    verbose_name = "notification (delivery receipt)"
    verbose_name_plural = "notifications: delivery receipts"
    fields = ["recipient", "kind", "title", "created_at", "pushed_at", "delivered_at", "read_at", "emailed_at"]
    ordering = ["pk"]


class NotificationDeliveryFilter(admin.SimpleListFilter):
    title = "notification delivery"
    parameter_name = "notification_delivery"

    def lookups(self, request, model_admin):
        return [("never", "A notification never delivered"), ("delivered", "All notifications delivered")]

    def queryset(self, request, queryset):
        undelivered = Exists(Notification.objects.filter(order=OuterRef("pk"), delivered_at__isnull=True))
        if self.value() == "never":
            return queryset.filter(undelivered)
        if self.value() == "delivered":
            return queryset.filter(~undelivered)
        return queryset


@admin.action(description="Resend the notifications no browser has shown yet")
def resend_undelivered(modeladmin, request, queryset):
    notifications = Notification.objects.filter(order__in=queryset, delivered_at__isnull=True).order_by("pk")
    count = 0
    for notification in notifications:
        services.dispatch(notification)
        count += 1
    modeladmin.message_user(
        request, f"{count} notification(s) pushed again to the shoppers' open pages.", messages.SUCCESS
    )


# The shop's order admin, plus the receipts: the shop knows nothing of notifications, so this
# app extends the shop's admin class rather than the shop importing this app.
class OrderAdmin(shop_admin.OrderAdmin):
    inlines = [*shop_admin.OrderAdmin.inlines, NotificationReceiptInline]
    list_filter = [*shop_admin.OrderAdmin.list_filter, NotificationDeliveryFilter]
    actions = [*shop_admin.OrderAdmin.actions, resend_undelivered]


admin.site.unregister(Order)
admin.site.register(Order, OrderAdmin)


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ["user", "kind", "by_email"]
    list_filter = ["kind", "by_email"]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]


@admin.register(StockAlert)
class StockAlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "product"]
    search_fields = ["user__username", "product__name"]
    list_select_related = ["user", "product"]
    readonly_fields = ["user", "product", "created_at"]

    def has_add_permission(self, request):
        return False

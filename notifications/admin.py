from django.contrib import admin, messages

from . import services
from .models import Notification


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
    list_display = ["created_at", "recipient", "kind", "title", "delivered_at", "read_at"]
    list_filter = ["kind", DeliveredFilter, ReadFilter, "created_at"]
    search_fields = ["title", "body", "recipient__username", "recipient__email"]
    readonly_fields = ["recipient", "kind", "title", "body", "url", "created_at", "delivered_at", "read_at"]
    list_select_related = ["recipient"]
    actions = [resend]

    def has_add_permission(self, request):
        return False

from django.contrib import admin, messages

from . import services
from .models import Notification


class DeliveredFilter(admin.SimpleListFilter):
    title = "delivered"
    parameter_name = "delivered"

    def lookups(self, request, model_admin):
        return [("yes", "Delivered"), ("no", "Not delivered")]

    def queryset(self, request, queryset):
        if self.value() in {"yes", "no"}:
            return queryset.filter(delivered_at__isnull=self.value() == "no")
        return queryset


class ReadFilter(DeliveredFilter):
    title = "read"
    parameter_name = "read"

    def lookups(self, request, model_admin):
        return [("yes", "Read"), ("no", "Unread")]

    def queryset(self, request, queryset):
        if self.value() in {"yes", "no"}:
            return queryset.filter(read_at__isnull=self.value() == "no")
        return queryset


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

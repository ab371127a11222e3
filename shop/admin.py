from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from . import services
from .models import Order, OrderEvent, OrderLine, Payment, Product
from .payments import PaymentError


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "price", "stock", "is_active", "created_at"]
    list_editable = ["price", "stock", "is_active"]
    list_filter = ["is_active", "created_at"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}


class ReadOnlyInline(admin.TabularInline):
    """An inline that shows history: nothing in it is added, edited or deleted by hand."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class OrderLineInline(ReadOnlyInline):
    model = OrderLine
    fields = ["product_name", "unit_price", "quantity", "product"]


class OrderEventInline(ReadOnlyInline):
    model = OrderEvent
    fields = ["created_at", "from_status", "to_status", "actor", "message"]


class OrderAdminForm(forms.ModelForm):
    """Offer only the statuses the order may move to; the move itself is a service call."""

    class Meta:
        model = Order
        fields = ["status"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            allowed = {self.instance.status} | services.ALLOWED_TRANSITIONS[self.instance.status]
            self.fields["status"].choices = [
                (value, label) for value, label in Order.Status.choices if value in allowed
            ]

    def clean_status(self):
        status = self.cleaned_data["status"]
        if status != self.instance.status and (
            problem := services.transition_problem(order=self.instance, status=status)
        ):
            raise forms.ValidationError(problem)
        return status


def _change_status(modeladmin, request, queryset, status):
    changed = 0
    for order in queryset.order_by("pk"):
        try:
            services.change_order_status(order=order, status=status, actor=request.user)
            changed += 1
        except (services.InvalidTransition, PaymentError) as error:
            modeladmin.message_user(request, error.message, messages.ERROR)
    if changed:
        label = Order.Status(status).label.lower()
        modeladmin.message_user(request, f"{changed} order(s) marked {label}.", messages.SUCCESS)


@admin.action(description="Mark selected orders shipped", permissions=["change"])
def mark_shipped(modeladmin, request, queryset):
    _change_status(modeladmin, request, queryset, Order.Status.SHIPPED)


@admin.action(description="Mark selected orders delivered", permissions=["change"])
def mark_delivered(modeladmin, request, queryset):
    _change_status(modeladmin, request, queryset, Order.Status.DELIVERED)


@admin.action(description="Cancel selected orders (returns stock and money)", permissions=["change"])
def mark_cancelled(modeladmin, request, queryset):
    _change_status(modeladmin, request, queryset, Order.Status.CANCELLED)


@admin.action(description="Refund selected orders", permissions=["change"])
def mark_refunded(modeladmin, request, queryset):
    _change_status(modeladmin, request, queryset, Order.Status.REFUNDED)


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    form = OrderAdminForm
    list_display = ["number", "user", "status", "total", "currency", "created_at"]
    list_filter = ["status", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["number", "user__username", "user__email"]
    readonly_fields = ["number", "user", "total", "currency", "created_at", "updated_at"]
    fields = ["number", "user", "status", "total", "currency", "created_at", "updated_at"]
    inlines = [OrderLineInline, OrderEventInline]
    actions = [mark_shipped, mark_delivered, mark_cancelled, mark_refunded]
    list_select_related = ["user"]

    def has_add_permission(self, request):
        return False  # Orders come from checkouts only.

    def has_delete_permission(self, request, obj=None):
        return False  # Cancel or refund instead: the history stays.

    def save_model(self, request, obj, form, change):
        if "status" not in form.changed_data:
            return
        original = Order.objects.get(pk=obj.pk)
        try:
            services.change_order_status(order=original, status=form.cleaned_data["status"], actor=request.user)
        except (services.InvalidTransition, PaymentError) as error:
            self.message_user(request, error.message, messages.ERROR)
        obj.refresh_from_db()


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "status", "amount", "currency", "order", "user", "reference", "card_last4"]
    list_filter = ["kind", "status", "created_at"]
    search_fields = ["reference", "order__number", "user__username", "idempotency_key"]
    list_select_related = ["order", "user"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class CustomerOrderInline(ReadOnlyInline):
    model = Order
    fields = ["number", "status", "total", "currency", "created_at"]
    show_change_link = True
    verbose_name_plural = "orders"


Customer = get_user_model()
admin.site.unregister(Customer)


@admin.register(Customer)
class CustomerAdmin(UserAdmin):
    """Django's user admin, with each customer's orders on their page."""

    inlines = [CustomerOrderInline]
    list_display = [*UserAdmin.list_display, "date_joined", "last_login"]

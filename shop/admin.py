from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.validators import MaxValueValidator
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import services
from .models import Address, Category, Order, OrderEvent, OrderLine, Payment, Product, StockMovement
from .payments import PaymentError

# The admin carries the shop's name, not Django's.
admin.site.site_header = "Storefront administration"
admin.site.site_title = "Storefront admin"
admin.site.index_title = "Run the shop"

# Stock --------------------------------------------------------------------------------------
# Stock is read-only everywhere in the admin: it changes only through the stock services,
# as a delta under the row lock, so a page loaded before a sale can never write it back.

STOCK_HISTORY_ON_PAGE = 50
RECEIVE_AT_ONCE = 100  # Products one "Receive stock..." page may list.


def describe_movement(movement: StockMovement) -> str:
    """Say what a staff stock movement did, e.g. "Received 5 units of Kettle; 12 in stock."."""
    units = abs(movement.delta)
    amount = f"{units:,} unit" if units == 1 else f"{units:,} units"
    product, left = movement.product.name, f"{movement.stock_after:,} in stock"
    if movement.reason == StockMovement.Reason.RECEIVED:
        return f"Received {amount} of {product}; {left}."
    if movement.reason == StockMovement.Reason.WRITTEN_OFF:
        return f"Wrote off {amount} of {product}; {left}."
    verb = "Added" if movement.delta > 0 else "Removed"
    return f"{verb} {amount} of {product} ({movement.get_reason_display().lower()}); {left}."


class ProductAdminForm(forms.ModelForm):
    """The product's fields; on an existing product, a stock change applied by the stock service."""

    stock_change = forms.IntegerField(
        required=False,
        label="Add or remove units",
        min_value=-services.MAX_STOCK,
        max_value=services.MAX_STOCK,
        help_text="A positive number adds units, a negative one removes them. Empty: the stock stays as it is.",
    )
    stock_reason = forms.ChoiceField(
        required=False,
        label="Reason",
        choices=[(reason.value, reason.label) for reason in services.STAFF_REASONS],
        initial=StockMovement.Reason.RECEIVED,
    )
    stock_note = forms.CharField(
        required=False, max_length=255, label="Note", help_text="E.g. the delivery note or what was broken."
    )

    class Meta:
        model = Product
        fields = ["name", "slug", "category", "description", "price", "image", "image_alt", "stock", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "stock" in self.fields:  # Only on the add form: the new product's first units.
            self.fields["stock"].label = "Initial stock"
            self.fields["stock"].max_value = services.MAX_STOCK
            self.fields["stock"].validators.append(MaxValueValidator(services.MAX_STOCK))
            self.fields["stock"].widget.attrs["max"] = services.MAX_STOCK

    def clean(self):
        cleaned_data = super().clean()
        delta = cleaned_data.get("stock_change")
        if delta and self.instance.pk:
            reason = cleaned_data.get("stock_reason") or StockMovement.Reason.RECEIVED
            cleaned_data["stock_reason"] = reason
            if problem := services.stock_change_problem(product=self.instance, delta=delta, reason=reason):
                self.add_error("stock_change", problem)
        return cleaned_data


class ReceiveStockForm(forms.Form):
    """How many units arrived of each selected product."""

    note = forms.CharField(required=False, max_length=255, help_text="E.g. the delivery note.")

    def __init__(self, *args, products: list[Product], **kwargs):
        super().__init__(*args, **kwargs)
        self.products = products
        for product in products:
            self.fields[f"units_{product.pk}"] = forms.IntegerField(
                required=False, min_value=0, max_value=services.MAX_STOCK, label=product.name
            )

    def rows(self):
        return [(product, self[f"units_{product.pk}"]) for product in self.products]

    def quantities(self) -> dict[int, int]:
        return {
            product.pk: units for product in self.products if (units := self.cleaned_data.get(f"units_{product.pk}"))
        }

    def clean(self):
        cleaned_data = super().clean()
        if not self.errors and not self.quantities():
            raise forms.ValidationError("Enter how many units arrived for at least one product.")
        return cleaned_data


class LatestStockMovementsFormSet(BaseInlineFormSet):
    """The product's newest movements only: a best-seller has thousands."""

    def get_queryset(self):
        # Kept, so the formset's len() and indexing share one evaluated query.
        if not hasattr(self, "_latest_movements"):
            self._latest_movements = super().get_queryset()[:STOCK_HISTORY_ON_PAGE]
        return self._latest_movements


class StockMovementInline(admin.TabularInline):
    """The product's stock history, newest first; view only (movements are written by services)."""

    model = StockMovement
    formset = LatestStockMovementsFormSet
    fields = ["created_at", "reason", "delta", "stock_after", "order", "actor", "note"]
    readonly_fields = fields
    ordering = ["-created_at", "-pk"]
    extra = 0
    can_delete = False
    verbose_name_plural = f"stock movements (latest {STOCK_HISTORY_ON_PAGE})"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "product_count"]
    search_fields = ["name", "description"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(product_count=Count("products"))

    @admin.display(description="Products", ordering="product_count")
    def product_count(self, obj: Category) -> int:
        return obj.product_count


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductAdminForm
    list_display = ["thumbnail", "name", "category", "price", "stock", "is_active", "created_at"]
    list_display_links = ["thumbnail", "name"]
    list_editable = ["price", "is_active"]
    list_filter = ["is_active", "category", "created_at"]
    list_select_related = ["category"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StockMovementInline]
    actions = ["receive_stock"]

    def get_fieldsets(self, request, obj=None):
        details = (None, {"fields": ["name", "slug", "category", "description", "price", "is_active"]})
        photo = ("Photo", {"fields": ["image", "image_alt", *(["photo_preview"] if obj is not None else [])]})
        if obj is None:
            return [(None, {"fields": [*details[1]["fields"], "stock"]}), photo]
        stock = {
            "fields": ["stock", ("stock_change", "stock_reason"), "stock_note", "stock_history"],
            "description": "Stock changes only by movements: a sale, a return, or a change you make here.",
        }
        return [details, photo, ("Stock", stock)]

    def get_readonly_fields(self, request, obj=None):
        return ["stock", "stock_history", "photo_preview"] if obj is not None else []

    @admin.display(description="Photo")
    def thumbnail(self, obj: Product) -> str:
        if not obj.image_tile:
            return "—"
        return format_html('<img src="{}" width="64" height="48" alt="">', obj.image_tile.url)

    @admin.display(description="As shoppers see it")
    def photo_preview(self, obj: Product) -> str:
        if not obj.image_tile:
            return "No photo: the catalog shows a coloured tile with the product's initials."
        return format_html(
            '<img src="{}" width="240" height="180" alt="{}">',
            obj.image_tile.url,
            obj.image_alt_text,
        )

    def save_form(self, request, form, change):
        self._photo_changed = "image" in form.changed_data
        return super().save_form(request, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if getattr(self, "_photo_changed", False):
            # The renditions the pages show are made from the uploaded photo (or cleared with it).
            try:
                services.make_product_renditions(product=form.instance)
            except services.InvalidImage as error:
                self.message_user(request, error.message, messages.ERROR)

    @admin.display(description="History")
    def stock_history(self, obj: Product) -> str:
        count = obj.stock_movements.count()
        url = reverse("admin:shop_stockmovement_changelist") + f"?product__id__exact={obj.pk}"
        return format_html('<a href="{}">All {} stock movement(s) of {}</a>', url, count, obj.name)

    def save_model(self, request, obj, form, change):
        if not change:
            # The first units are a movement too: the product starts at 0 and receives them.
            initial, obj.stock = obj.stock or 0, 0
            super().save_model(request, obj, form, change)
            if initial:
                self._apply(request, services.receive_stock, product=obj, quantity=initial, note="Initial stock")
            return
        super().save_model(request, obj, form, change)  # Never writes stock: see Product.save().
        if delta := form.cleaned_data.get("stock_change"):
            self._apply(
                request,
                services.adjust_stock,
                product=obj,
                delta=delta,
                reason=form.cleaned_data["stock_reason"],
                note=form.cleaned_data.get("stock_note", ""),
            )

    def _apply(self, request, service, **kwargs) -> None:
        try:
            movement = service(actor=request.user, **kwargs)
        except services.ShopError as error:
            # Refused under the row lock (a sale took the units since the form was checked).
            self.message_user(request, error.message, messages.ERROR)
        else:
            self.message_user(request, describe_movement(movement), messages.SUCCESS)

    @admin.action(description="Receive stock…", permissions=["change"])
    def receive_stock(self, request, queryset):
        products = list(queryset.order_by("name")[: RECEIVE_AT_ONCE + 1])
        if len(products) > RECEIVE_AT_ONCE:
            self.message_user(request, f"Select at most {RECEIVE_AT_ONCE} products to receive at once.", messages.ERROR)
            return None
        if "apply" in request.POST:
            form = ReceiveStockForm(request.POST, products=products)
            if form.is_valid():
                try:
                    movements = services.receive_stock_batch(
                        quantities=form.quantities(), actor=request.user, note=form.cleaned_data["note"]
                    )
                except services.ShopError as error:
                    form.add_error(None, error.message)
                else:
                    for movement in movements:
                        self.message_user(request, describe_movement(movement), messages.SUCCESS)
                    return None  # Back to the product list.
        else:
            form = ReceiveStockForm(products=products)
        context = {
            **self.admin_site.each_context(request),
            "title": "Receive stock",
            "opts": self.model._meta,
            "form": form,
            "products": products,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/shop/product/receive_stock.html", context)


@admin.register(StockMovement)
class StockMovementAdmin(admin.ModelAdmin):
    """Every stock change, read only: movements are written by the stock services alone."""

    list_display = ["created_at", "product", "reason", "units", "stock_after", "order", "actor", "note"]
    list_filter = ["reason", "created_at"]
    search_fields = ["product__name", "product__slug", "order__number", "note"]
    list_select_related = ["product", "order", "actor"]
    date_hierarchy = "created_at"

    @admin.display(description="Units", ordering="delta")
    def units(self, obj: StockMovement) -> str:
        return f"{obj.delta:+,d}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


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
    result = services.change_orders_status(
        order_ids=queryset.values_list("pk", flat=True), status=status, actor=request.user
    )
    # Each refusal says which order and why; a selection of thousands is summed up, not listed.
    for problem in result.problems[:MAX_LISTED_PROBLEMS]:
        modeladmin.message_user(request, problem, messages.ERROR)
    if len(result.problems) > MAX_LISTED_PROBLEMS:
        modeladmin.message_user(
            request,
            f"… and {len(result.problems) - MAX_LISTED_PROBLEMS} more order(s) could not be changed.",
            messages.ERROR,
        )
    if result.changed:
        label = Order.Status(status).label.lower()
        modeladmin.message_user(request, f"{len(result.changed)} order(s) marked {label}.", messages.SUCCESS)


MAX_LISTED_PROBLEMS = 10


def _status_action(transition: services.Transition):
    """An admin action moving the selected orders along one transition of the table."""

    def action(modeladmin, request, queryset):
        _change_status(modeladmin, request, queryset, transition.to)

    action.__name__ = f"mark_{transition.to}"
    return admin.action(description=transition.admin_action, permissions=["change"])(action)


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    form = OrderAdminForm
    list_display = ["number", "user", "status", "total", "currency", "ship_to", "created_at"]
    list_filter = ["status", "shipping_country", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["number", "user__username", "user__email", "email", "shipping_name", "shipping_postal_code"]
    readonly_fields = [
        "number",
        "user",
        "total",
        "currency",
        "created_at",
        "updated_at",
        "shipping_address",
        "shipping_phone",
        "email",
        "receipt",
    ]
    fieldsets = [
        (None, {"fields": ["number", "user", "status", "total", "currency", "created_at", "updated_at"]}),
        ("Delivery", {"fields": ["shipping_address", "shipping_phone", "email", "receipt"]}),
    ]

    @admin.display(description="Ship to")
    def ship_to(self, obj: Order) -> str:
        return ", ".join(obj.shipping_address_lines[1:]) or "—"

    @admin.display(description="Address")
    def shipping_address(self, obj: Order) -> str:
        lines = obj.shipping_address_lines
        if not lines:
            return "—"
        return format_html_join(format_html("<br>"), "{}", ((line,) for line in lines))

    @admin.display(description="Receipt")
    def receipt(self, obj: Order) -> str:
        if obj.receipt_sent_at is None:
            return "Not sent yet"
        return f"Sent to {obj.receipt_sent_to} on {obj.receipt_sent_at:%Y-%m-%d %H:%M} UTC"

    inlines = [OrderLineInline, OrderEventInline]
    actions = [_status_action(transition) for transition in services.ORDER_TRANSITIONS.values()]
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


class CustomerAddressInline(admin.TabularInline):
    model = Address
    fields = ["full_name", "line1", "line2", "postal_code", "city", "country", "phone", "is_default"]
    # The default is the shopper's choice (account page); two defaults would break the one-default rule.
    readonly_fields = ["is_default"]
    extra = 0
    verbose_name_plural = "address book"


@admin.register(Customer)
class CustomerAdmin(UserAdmin):
    """Django's user admin, with each customer's orders and address book on their page."""

    inlines = [CustomerOrderInline, CustomerAddressInline]
    list_display = [*UserAdmin.list_display, "date_joined", "last_login"]

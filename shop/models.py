import secrets
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Sum
from django.urls import reverse

from .countries import SHIPPING_COUNTRIES, country_name

# Crockford's base32 without look-alikes: order numbers are read out over the phone.
ORDER_NUMBER_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ORDER_NUMBER_LENGTH = 10
LOW_STOCK_THRESHOLD = 5


def new_order_number() -> str:
    """Return a random order number: 50 bits, so no one can guess another shopper's."""
    return "".join(secrets.choice(ORDER_NUMBER_ALPHABET) for _ in range(ORDER_NUMBER_LENGTH))


def address_lines(*, full_name: str, line1: str, line2: str, city: str, postal_code: str, country: str) -> list[str]:
    """Write a postal address as the lines of an envelope (empty parts left out)."""
    town = " ".join(part for part in (postal_code, city) if part)
    return [line for line in (full_name, line1, line2, town, country_name(country) if country else "") if line]


class Category(models.Model):
    """A shelf of the catalog, managed by staff in the admin."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True, help_text="Shown on the category page and in search results' snippets.")

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("shop:category", kwargs={"slug": self.slug})


class ProductQuerySet(models.QuerySet):
    def available(self):
        """Products a shopper may see and buy (sold-out ones are still listed)."""
        return self.filter(is_active=True)


class Product(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField(default=0, help_text="Units on hand that are not reserved by an order.")
    is_active = models.BooleanField(default=True, help_text="Inactive products are hidden from the catalog.")
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="products")
    # The photo as uploaded; pages show the renditions made from it (shop.services.catalog),
    # sized for the catalog tiles and the product page.
    image = models.ImageField(upload_to="products/originals/", blank=True)
    image_alt = models.CharField(
        max_length=200, blank=True, help_text="What the photo shows, for people who cannot see it. Empty: the name."
    )
    image_tile = models.ImageField(upload_to="products/tiles/", blank=True, editable=False)
    image_large = models.ImageField(upload_to="products/large/", blank=True, editable=False)
    image_large_width = models.PositiveIntegerField(null=True, blank=True, editable=False)
    image_large_height = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative"),
            models.CheckConstraint(condition=Q(stock__gte=0), name="product_stock_not_negative"),
        ]

    def __str__(self):
        return self.name

    def save(self, **kwargs):
        """Save the product; on an existing row, every field but `stock`.

        Stock changes only through shop.services.stock, as a delta under the row lock. A
        full-row UPDATE from an instance loaded earlier (an admin page, a shell, a form)
        would write back the stock it read, undoing every sale made since: so an existing
        row's UPDATE leaves `stock` out. A new product may still be created with stock.
        """
        if not self._state.adding and self.pk is not None:
            update_fields = kwargs.get("update_fields")
            if update_fields is None:
                deferred = self.get_deferred_fields()  # As Django does: fields not loaded are not saved.
                kwargs["update_fields"] = [
                    field.name
                    for field in self._meta.concrete_fields
                    if not field.primary_key and field.name != "stock" and field.attname not in deferred
                ]
            elif "stock" in update_fields:
                raise ValueError("Product stock changes only through shop.services.stock, never through save().")
        super().save(**kwargs)

    def get_absolute_url(self):
        return reverse("shop:product", kwargs={"slug": self.slug})

    @property
    def is_sold_out(self) -> bool:
        return self.stock <= 0

    @property
    def stock_label(self) -> str:
        """Describe availability the way a shopper reads it."""
        if self.stock <= 0:
            return "sold out"
        if self.stock <= LOW_STOCK_THRESHOLD:
            return f"only {self.stock} left"
        return "in stock"

    @property
    def image_alt_text(self) -> str:
        return self.image_alt or self.name


class Cart(models.Model):
    """A shopper's cart: one per signed-in user, or one per anonymous session."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="cart"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"Cart {self.pk} of {self.user or 'anonymous'}"

    def lines_with_products(self):
        return self.lines.select_related("product").order_by("product__name")

    @property
    def item_count(self) -> int:
        return self.lines.aggregate(total=Sum("quantity"))["total"] or 0

    @property
    def total(self) -> Decimal:
        return self.lines.aggregate(total=Sum(F("quantity") * F("product__price")))["total"] or Decimal("0.00")


class CartLine(models.Model):
    cart = models.ForeignKey(Cart, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    quantity = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cart", "product"], name="one_cart_line_per_product"),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="cart_line_quantity_positive"),
        ]

    def __str__(self):
        return f"{self.quantity} x {self.product}"

    @property
    def line_total(self) -> Decimal:
        return self.product.price * self.quantity


class OrderQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(user=user)


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending payment"
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        DELIVERED = "delivered", "Delivered"
        CANCELLED = "cancelled", "Cancelled"
        REFUNDED = "refunded", "Refunded"

    number = models.CharField(max_length=ORDER_NUMBER_LENGTH, unique=True, default=new_order_number, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    # The idempotency key of the checkout that created this order: a resubmitted form finds it.
    checkout_token = models.CharField(max_length=64, unique=True, editable=False)
    # Where it goes, as the shopper gave it at checkout: a later change to their address book
    # does not move an order that has been placed.
    shipping_name = models.CharField("full name", max_length=150, blank=True)
    shipping_line1 = models.CharField("address line 1", max_length=200, blank=True)
    shipping_line2 = models.CharField("address line 2", max_length=200, blank=True)
    shipping_city = models.CharField("city", max_length=100, blank=True)
    shipping_postal_code = models.CharField("postal code", max_length=20, blank=True)
    shipping_country = models.CharField("country", max_length=2, choices=SHIPPING_COUNTRIES, blank=True)
    shipping_phone = models.CharField("phone", max_length=30, blank=True)
    email = models.EmailField(
        "receipt email", blank=True, help_text="Where the receipt goes (the account's email if empty)."
    )
    # Set by the confirmation email's task once the mail server took the receipt.
    receipt_sent_to = models.EmailField(blank=True, editable=False)
    receipt_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OrderQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.CheckConstraint(condition=Q(total__gte=0), name="order_total_not_negative")]

    def __str__(self):
        return f"Order {self.number}"

    def get_absolute_url(self):
        return reverse("shop:order", kwargs={"number": self.number})

    @property
    def receipt_email(self) -> str:
        """Where the receipt goes: the address given at checkout, else the account's."""
        return self.email or self.user.email

    @property
    def shipping_address_lines(self) -> list[str]:
        return address_lines(
            full_name=self.shipping_name,
            line1=self.shipping_line1,
            line2=self.shipping_line2,
            city=self.shipping_city,
            postal_code=self.shipping_postal_code,
            country=self.shipping_country,
        )


class OrderLine(models.Model):
    """A line of an order, with the product's name and price as they were when ordered."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, null=True, on_delete=models.SET_NULL, related_name="+")
    product_name = models.CharField(max_length=200)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)
    quantity = models.PositiveIntegerField()

    class Meta:
        ordering = ["pk"]
        constraints = [models.CheckConstraint(condition=Q(quantity__gte=1), name="order_line_quantity_positive")]

    def __str__(self):
        return f"{self.quantity} x {self.product_name}"

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class Payment(models.Model):
    """One answer of the bank: a capture, a refusal, an error or a refund.

    Refused attempts keep no order (the reservation is released and the pending order
    removed), so `order` is null for them; `user` and `idempotency_key` still tell whose
    checkout it was.
    """

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"

    class Status(models.TextChoices):
        CAPTURED = "captured", "Captured"
        DECLINED = "declined", "Declined"
        FAILED = "failed", "Bank error"
        REFUNDED = "refunded", "Refunded"

    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="payments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CHARGE)
    status = models.CharField(max_length=10, choices=Status.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    idempotency_key = models.CharField(max_length=100, unique=True)
    reference = models.CharField(max_length=100, blank=True, help_text="The bank's reference.")
    card_last4 = models.CharField(max_length=4, blank=True)
    message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.CheckConstraint(condition=Q(amount__gte=0), name="payment_amount_not_negative")]

    def __str__(self):
        return f"{self.get_kind_display()} {self.get_status_display()} {self.amount} {self.currency}"


class OrderEvent(models.Model):
    """An entry of an order's timeline: every status change, with who made it."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=Order.Status.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=Order.Status.choices)
    message = models.CharField(max_length=255, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self):
        return f"{self.order.number}: {self.from_status or '-'} -> {self.to_status}"


class StockMovement(models.Model):
    """One change of a product's stock: who moved how many units, why, and what was left.

    Written by shop.services.stock under the product's row lock, in the same transaction
    as the change, so `stock_after` is exact and a product's movements in pk order chain up.
    """

    class Reason(models.TextChoices):
        RECEIVED = "received", "Received"
        WRITTEN_OFF = "written_off", "Written off"
        CORRECTION = "correction", "Count correction"
        SOLD = "sold", "Sold"
        RETURNED = "returned", "Returned"

    # PROTECT: a product with a stock history is deactivated, not deleted, so the history stays whole.
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="stock_movements")
    delta = models.IntegerField(help_text="Units added (positive) or taken out (negative).")
    reason = models.CharField(max_length=16, choices=Reason.choices, db_index=True)
    stock_after = models.PositiveIntegerField(help_text="The product's stock right after this movement.")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Sales and returns name their order. A refused payment deletes its pending order; the
    # movements stay (with the order's number in the note) so the history still adds up.
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="stock_movements")
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=~Q(delta=0), name="stock_movement_delta_not_zero"),
            models.CheckConstraint(condition=Q(stock_after__gte=0), name="stock_movement_stock_after_not_negative"),
        ]
        indexes = [models.Index(fields=["product", "-created_at"], name="stock_movement_product_recent")]

    def __str__(self):
        return f"{self.delta:+d} {self.product} ({self.get_reason_display().lower()})"


class Address(models.Model):
    """An address of a shopper's address book; the default one fills in the next checkout."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="addresses")
    full_name = models.CharField(max_length=150)
    line1 = models.CharField("address line 1", max_length=200)
    line2 = models.CharField("address line 2", max_length=200, blank=True)
    city = models.CharField(max_length=100)
    postal_code = models.CharField(max_length=20)
    country = models.CharField(max_length=2, choices=SHIPPING_COUNTRIES)
    phone = models.CharField(max_length=30, blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_default", "-updated_at", "-pk"]
        verbose_name_plural = "addresses"
        constraints = [
            models.UniqueConstraint(fields=["user"], condition=Q(is_default=True), name="one_default_address_per_user")
        ]

    def __str__(self):
        return ", ".join(self.lines)

    @property
    def lines(self) -> list[str]:
        return address_lines(
            full_name=self.full_name,
            line1=self.line1,
            line2=self.line2,
            city=self.city,
            postal_code=self.postal_code,
            country=self.country,
        )

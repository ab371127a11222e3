"""The shopper's cart: every add and update is checked against current stock."""

import hashlib
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from ..models import Cart, CartLine, Order, Product
from .errors import OutOfStock, QuantityNotAllowed


def availability_problem(*, product: Product, quantity: int) -> str | None:
    """Say why `quantity` units of `product` cannot be had now, or return None if they can."""
    if not product.is_active:
        return f"{product.name} is no longer available."
    if product.stock <= 0:
        return f"{product.name} is sold out."
    if quantity > product.stock:
        return f"Only {product.stock} left of {product.name}."
    return None


def fingerprint(items: Iterable[tuple[int, int, Decimal]]) -> str:
    """Identify a set of (product id, quantity, unit price): equal sets, equal fingerprints."""
    canonical = ";".join(f"{product_id}:{quantity}:{price}" for product_id, quantity, price in sorted(items))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cart_fingerprint(cart: Cart | None) -> str:
    """Identify what a cart holds at today's prices: the checkout page is shown for this."""
    if cart is None:
        return fingerprint([])
    return fingerprint((line.product_id, line.quantity, line.product.price) for line in cart.lines_with_products())


def order_fingerprint(order: Order) -> str:
    """Identify what an order was reserved for, comparable with cart_fingerprint()."""
    return fingerprint((line.product_id, line.quantity, line.unit_price) for line in order.lines.all())


def _already_in_cart(in_cart: int, room: int) -> str:
    units = "1 is" if in_cart == 1 else f"{in_cart} are"
    if room > 0:
        return f"{units} already in your cart, so you can add {room} more."
    return f"{units} already in your cart."


def _check_quantity(*, product: Product, quantity: int, in_cart: int = 0) -> None:
    """Refuse a line of `quantity` units; `in_cart` of them are already in the cart (an add)."""
    limit = settings.SHOP_MAX_QUANTITY_PER_LINE
    if quantity > limit:
        message = f"You can buy at most {limit} of {product.name} per order."
        if in_cart:
            message += " " + _already_in_cart(in_cart, limit - in_cart)
        raise QuantityNotAllowed(message)
    if problem := availability_problem(product=product, quantity=quantity):
        if in_cart and product.is_active and product.stock > 0:
            problem += " " + _already_in_cart(in_cart, product.stock - in_cart)
        raise OutOfStock(problem)


def get_cart(*, user=None, cart_id: int | None = None, create: bool = False) -> Cart | None:
    """Return the signed-in user's cart, or the anonymous session's cart `cart_id`."""
    if user is not None and user.is_authenticated:
        if create:
            return Cart.objects.get_or_create(user=user)[0]
        return Cart.objects.filter(user=user).first()
    if cart_id is not None:
        cart = Cart.objects.filter(pk=cart_id, user__isnull=True).first()
        if cart is not None:
            return cart
    return Cart.objects.create() if create else None


def _lock_cart(cart: Cart) -> None:
    # A double-clicked "add" waits for the first click instead of inserting the same line
    # twice (an IntegrityError) or losing one click's units. The cart comes first, as in
    # reserve_order, so the two never deadlock.
    list(Cart.objects.select_for_update().filter(pk=cart.pk).only("pk"))


def add_to_cart(*, cart: Cart, product: Product, quantity: int) -> CartLine:
    """Add `quantity` units, checking the new total against current stock."""
    with transaction.atomic():
        _lock_cart(cart)
        line = CartLine.objects.filter(cart=cart, product=product).first()
        in_cart = line.quantity if line else 0
        _check_quantity(product=product, quantity=quantity + in_cart, in_cart=in_cart)
        new_quantity = quantity + in_cart
        if line is None:
            line = CartLine.objects.create(cart=cart, product=product, quantity=new_quantity)
        else:
            line.quantity = new_quantity
            line.save(update_fields=["quantity"])
        cart.save(update_fields=["updated_at"])
    return line


def update_cart_line(*, cart: Cart, product: Product, quantity: int) -> CartLine | None:
    """Set a line's quantity; zero removes the line."""
    if quantity == 0:
        remove_from_cart(cart=cart, product=product)
        return None
    with transaction.atomic():
        _lock_cart(cart)
        _check_quantity(product=product, quantity=quantity)
        line, _ = CartLine.objects.update_or_create(cart=cart, product=product, defaults={"quantity": quantity})
        cart.save(update_fields=["updated_at"])
    return line


def remove_from_cart(*, cart: Cart, product: Product) -> None:
    CartLine.objects.filter(cart=cart, product=product).delete()


def merge_carts(*, source: Cart, target: Cart) -> list[str]:
    """Move an anonymous cart into a user's cart; return what could not be kept in full.

    Quantities add up, capped at what is in stock and at the per-line maximum.
    """
    if source.pk == target.pk:
        return []
    notes = []
    limit = settings.SHOP_MAX_QUANTITY_PER_LINE
    with transaction.atomic():
        for line in source.lines.select_related("product"):
            existing = CartLine.objects.filter(cart=target, product=line.product).first()
            wanted = line.quantity + (existing.quantity if existing else 0)
            kept = max(0, min(wanted, line.product.stock, limit)) if line.product.is_active else 0
            if kept < wanted:
                notes.append(
                    availability_problem(product=line.product, quantity=wanted)
                    or f"You can buy at most {limit} of {line.product.name} per order."
                )
            if kept:
                CartLine.objects.update_or_create(cart=target, product=line.product, defaults={"quantity": kept})
            elif existing:
                existing.delete()
        source.delete()
    return notes


def quantity_in_cart(*, cart: Cart | None, product: Product) -> int:
    """How many units of `product` the cart holds (0 without a cart)."""
    if cart is None:
        return 0
    return CartLine.objects.filter(cart=cart, product=product).values_list("quantity", flat=True).first() or 0

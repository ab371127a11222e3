"""Domain actions of the shop. Each owns its transaction; views, admin and commands call them.

Checkout is the one async action: it awaits the bank between two short transactions, so
neither a thread nor a row lock is held while the bank thinks.
"""

import asyncio
import logging
from decimal import Decimal

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F

from .models import Cart, CartLine, Order, OrderEvent, OrderLine, Payment, Product
from .payments import BankUnavailable, Card, ChargeResult, PaymentError, get_gateway
from .signals import order_placed, order_status_changed

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


class ShopError(Exception):
    """A request the shop cannot carry out. The message is safe to show the shopper."""

    @property
    def message(self) -> str:
        return str(self)


class OutOfStock(ShopError):
    pass


class QuantityNotAllowed(ShopError):
    pass


class EmptyCart(ShopError):
    pass


class CheckoutExpired(ShopError):
    pass


class InvalidTransition(ShopError):
    pass


# Cart -------------------------------------------------------------------------------


def availability_problem(*, product: Product, quantity: int) -> str | None:
    """Say why `quantity` units of `product` cannot be had now, or return None if they can."""
    if not product.is_active:
        return f"{product.name} is no longer available."
    if product.stock <= 0:
        return f"{product.name} is sold out."
    if quantity > product.stock:
        return f"Only {product.stock} left of {product.name}."
    return None


def _check_quantity(*, product: Product, quantity: int) -> None:
    limit = settings.SHOP_MAX_QUANTITY_PER_LINE
    if quantity > limit:
        raise QuantityNotAllowed(f"You can buy at most {limit} of {product.name} per order.")
    if problem := availability_problem(product=product, quantity=quantity):
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
        new_quantity = quantity + (line.quantity if line else 0)
        _check_quantity(product=product, quantity=new_quantity)
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


# Checkout ---------------------------------------------------------------------------

# Payments in flight, kept referenced so that a shopper closing the tab (which cancels the
# request) cannot leave an order half paid: the payment runs to its end regardless.
_payments_in_flight: set[asyncio.Task] = set()


def checkout_idempotency_key(checkout_token: str) -> str:
    return f"checkout-{checkout_token}"


async def place_order(*, user, checkout_token: str, card: Card) -> Order:
    """Reserve the cart's stock, charge the card and return the paid order.

    Raise OutOfStock / EmptyCart / CheckoutExpired before any charge, and a PaymentError
    (its message safe to show) when the bank refuses; the reservation is then released.
    The same checkout token always ends in the same single order and charge.
    """
    task = asyncio.ensure_future(_place_order(user=user, checkout_token=checkout_token, card=card))
    _payments_in_flight.add(task)
    task.add_done_callback(_payments_in_flight.discard)
    return await asyncio.shield(task)


async def _place_order(*, user, checkout_token: str, card: Card) -> Order:
    order = await sync_to_async(reserve_order)(user=user, checkout_token=checkout_token)
    if order.status != Order.Status.PENDING:
        return order  # A resubmitted form: this checkout already ended.
    try:
        charge = await get_gateway().charge(
            amount=order.total,
            currency=order.currency,
            card=card,
            idempotency_key=checkout_idempotency_key(checkout_token),
        )
    except PaymentError as error:
        await sync_to_async(release_reservation)(order_id=order.pk, error=error, card_last4=card.last4)
        raise
    except Exception as error:
        logger.exception("Order %s: the gateway failed unexpectedly", order.number)
        await sync_to_async(release_reservation)(order_id=order.pk, error=BankUnavailable(), card_last4=card.last4)
        raise BankUnavailable() from error
    order = await sync_to_async(capture_payment)(order_id=order.pk, charge=charge)
    if order.status == Order.Status.CANCELLED:
        # Staff cancelled the order while the bank was answering: give the money back.
        await sync_to_async(refund_order_payment)(order=order)
        raise PaymentError("This order was cancelled while your payment was processing; the charge was refunded.")
    return order


def reserve_order(*, user, checkout_token: str) -> Order:
    """Transaction 1: take the cart's units out of stock into a PENDING order."""
    with transaction.atomic():
        # Lock the cart first, then products in pk order: every path takes locks in that
        # order, so concurrent checkouts wait for each other instead of deadlocking.
        cart = Cart.objects.select_for_update().filter(user=user).first()
        existing = Order.objects.filter(checkout_token=checkout_token).first()
        if existing is not None:
            if existing.user_id != user.pk:
                raise CheckoutExpired("This checkout has expired. Please review your cart and try again.")
            return existing
        lines = list(cart.lines.all()) if cart else []
        if not lines:
            raise EmptyCart("Your cart is empty.")
        products = {
            product.pk: product
            for product in Product.objects.select_for_update()
            .filter(pk__in=[line.product_id for line in lines])
            .order_by("pk")
        }
        problems = [
            problem
            for line in lines
            if (problem := availability_problem(product=products[line.product_id], quantity=line.quantity))
        ]
        if problems:
            raise OutOfStock(" ".join(problems))

        total = sum((products[line.product_id].price * line.quantity for line in lines), Decimal("0")).quantize(CENT)
        order = Order.objects.create(
            user=user, total=total, currency=settings.SHOP_CURRENCY, checkout_token=checkout_token
        )
        OrderLine.objects.bulk_create(
            OrderLine(
                order=order,
                product=products[line.product_id],
                product_name=products[line.product_id].name,
                unit_price=products[line.product_id].price,
                quantity=line.quantity,
            )
            for line in lines
        )
        for line in lines:
            products[line.product_id].stock -= line.quantity
        Product.objects.bulk_update(products.values(), ["stock"])
        OrderEvent.objects.create(
            order=order, to_status=Order.Status.PENDING, message="Stock reserved; awaiting the bank."
        )
    return order


def capture_payment(*, order_id: int, charge: ChargeResult) -> Order:
    """Transaction 2: record the captured charge and mark the order PAID."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        Payment.objects.get_or_create(
            idempotency_key=checkout_idempotency_key(order.checkout_token),
            defaults={
                "order": order,
                "user_id": order.user_id,
                "status": Payment.Status.CAPTURED,
                "amount": charge.amount,
                "currency": charge.currency,
                "reference": charge.reference,
                "card_last4": charge.card_last4,
            },
        )
        if order.status != Order.Status.PENDING:
            return order  # A concurrent retry of this checkout captured it first.
        _record_status(order=order, status=Order.Status.PAID, message=f"Payment {charge.reference} captured.")
        ordered_products = order.lines.values_list("product_id", flat=True)
        CartLine.objects.filter(cart__user_id=order.user_id, product_id__in=ordered_products).delete()
        order_placed.send(sender=Order, order=order)
    logger.info("Order %s paid (%s %s)", order.number, order.total, order.currency)
    return order


def release_reservation(*, order_id: int, error: PaymentError, card_last4: str) -> None:
    """Transaction 2 after a refusal: put the stock back, record the failure, drop the order."""
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None or order.status != Order.Status.PENDING:
            return  # A concurrent retry of this checkout already released it.
        _return_stock(order)
        Payment.objects.get_or_create(
            idempotency_key=checkout_idempotency_key(order.checkout_token),
            defaults={
                "user_id": order.user_id,
                "status": Payment.Status.FAILED if isinstance(error, BankUnavailable) else Payment.Status.DECLINED,
                "amount": order.total,
                "currency": order.currency,
                "card_last4": card_last4,
                "message": error.message[:255],
            },
        )
        order.delete()
    logger.warning("Order %s not paid, reservation released: %s", order.number, error.message)


def _return_stock(order: Order) -> None:
    product_ids = sorted(line.product_id for line in order.lines.all() if line.product_id)
    # Same pk order as reserve_order, so a release and a checkout never deadlock.
    list(Product.objects.select_for_update().filter(pk__in=product_ids).order_by("pk"))
    for line in order.lines.all():
        if line.product_id:
            Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)


def _record_status(*, order: Order, status: str, actor=None, message: str = "") -> str:
    previous = order.status
    order.status = status
    order.save(update_fields=["status", "updated_at"])
    OrderEvent.objects.create(order=order, from_status=previous, to_status=status, actor=actor, message=message)
    return previous


# Staff ------------------------------------------------------------------------------

ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    Order.Status.PENDING: {Order.Status.CANCELLED},
    Order.Status.PAID: {Order.Status.SHIPPED, Order.Status.CANCELLED, Order.Status.REFUNDED},
    Order.Status.SHIPPED: {Order.Status.DELIVERED, Order.Status.REFUNDED},
    Order.Status.DELIVERED: set(),
    Order.Status.CANCELLED: set(),
    Order.Status.REFUNDED: set(),
}


def transition_problem(*, order: Order, status: str) -> str | None:
    """Say why `order` cannot move to `status`, or return None if it can."""
    if status == Order.Status.PAID:
        return "An order becomes paid only when the bank captures its payment."
    if status not in ALLOWED_TRANSITIONS.get(order.status, set()):
        return (
            f"Order {order.number} is {order.get_status_display().lower()} "
            f"and cannot be marked {Order.Status(status).label.lower()}."
        )
    return None


def change_order_status(*, order: Order, status: str, actor=None, message: str = "") -> Order:
    """Move an order along its pipeline, returning stock and money where that applies.

    Cancelling returns the stock (and the money, if paid). Refunding a paid order that has
    not shipped returns the stock too; refunding a shipped one returns the money only.
    """
    if status not in Order.Status.values:
        raise InvalidTransition(f"{status!r} is not an order status.")
    with transaction.atomic():
        # The order row stays locked through the refund: a concurrent change (another staff
        # member shipping it) waits, so money never goes back for a move that is then refused.
        # Only the order is locked while the bank answers, never stock; the products are
        # locked after it, in the order -> products order every other path uses.
        order = Order.objects.select_for_update().get(pk=order.pk)
        if problem := transition_problem(order=order, status=status):
            raise InvalidTransition(problem)
        if order.status in {Order.Status.PAID, Order.Status.SHIPPED} and status in {
            Order.Status.CANCELLED,
            Order.Status.REFUNDED,
        }:
            # Idempotent at the bank (keyed by order): a retry after a failure refunds once.
            refund_order_payment(order=order)
        if order.status in {Order.Status.PENDING, Order.Status.PAID} and status in {
            Order.Status.CANCELLED,
            Order.Status.REFUNDED,
        }:
            _return_stock(order)
        previous = _record_status(order=order, status=status, actor=actor, message=message)
        order_status_changed.send(sender=Order, order=order, previous_status=previous, actor=actor)
    logger.info("Order %s: %s -> %s by %s", order.number, previous, status, actor or "the system")
    return order


def refund_order_payment(*, order: Order) -> Payment | None:
    """Refund an order's captured charge at the bank, once, and record it."""
    charge = order.payments.filter(kind=Payment.Kind.CHARGE, status=Payment.Status.CAPTURED).first()
    if charge is None:
        return None
    key = f"refund-{order.number}"
    if existing := Payment.objects.filter(idempotency_key=key).first():
        return existing
    refund = async_to_sync(get_gateway().refund)(
        charge_reference=charge.reference, amount=charge.amount, currency=charge.currency, idempotency_key=key
    )
    payment, _ = Payment.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "order": order,
            "user_id": order.user_id,
            "kind": Payment.Kind.REFUND,
            "status": Payment.Status.REFUNDED,
            "amount": refund.amount,
            "currency": refund.currency,
            "reference": refund.reference,
            "card_last4": charge.card_last4,
        },
    )
    return payment

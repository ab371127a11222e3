"""Checkout: reserve the cart's stock, await the bank, capture or release.

Checkout is the one async action: it awaits the bank between two short transactions, so
neither a thread nor a row lock is held while the bank thinks.
"""

import asyncio
import logging
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from ..models import Cart, CartLine, Order, OrderEvent, OrderLine, Payment, Product
from ..payments import BankUnavailable, Card, ChargeResult, PaymentError, get_gateway
from ..signals import order_placed
from .cart import availability_problem
from .errors import CheckoutExpired, EmptyCart, OutOfStock
from .orders import record_status, refund_order_payment
from .stock import return_order_stock, take_order_stock

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


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
        take_order_stock(order=order)
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
        record_status(order=order, status=Order.Status.PAID, message=f"Payment {charge.reference} captured.")
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
        return_order_stock(order)
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

"""Checkout: reserve the cart's stock, await the bank, capture or release.

Checkout is the one async action: it awaits the bank between two short transactions, so
neither a thread nor a row lock is held while the bank thinks.
"""

import asyncio
import logging
import weakref
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from .. import tasks
from ..models import Cart, CartLine, Order, OrderEvent, OrderLine, Payment
from ..payments import BankUnavailable, Card, ChargeResult, PaymentError, get_gateway
from ..signals import order_placed, payment_overdue
from .addresses import ShippingAddress
from .cart import availability_problem, fingerprint, order_fingerprint
from .errors import CartChanged, CheckoutExpired, EmptyCart, OutOfStock, PaymentInProgress
from .orders import change_order_status, record_status, refund_order_payment
from .stock import return_order_stock, take_order_stock

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


# Payments in flight, kept referenced so that a shopper closing the tab (which cancels the
# request) or a bank slower than PAYMENT_TIMEOUT cannot leave an order half paid: the
# payment runs to its end regardless, and whatever it cannot finish, reconciliation does.
_payments_in_flight: set[asyncio.Task] = set()

# Waits between attempts to record a captured charge when the database is unreachable (a
# PostgreSQL restart takes a second or two); each attempt uses a fresh connection.
CAPTURE_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


class PaymentNotRecorded(Exception):
    """The bank took the payment but the shop could not record it (its database is down).

    The order stays PENDING with its stock held; reconciliation records the capture once
    the database is back, so the charge is never lost. Nothing in the database may be
    touched to report this: it is down.
    """

    def __init__(self, order_number: str):
        super().__init__(f"Order {order_number}: the payment was taken but could not be recorded yet")
        self.order_number = order_number


def checkout_idempotency_key(checkout_token: str) -> str:
    return f"checkout-{checkout_token}"


def _release_connection() -> None:
    # Inside an outer transaction (a caller's, or a test's) the connection is not ours to end.
    if not connection.in_atomic_block:
        connection.close()


def _in_own_connection(function):
    """Wrap a transaction so that it runs off the event loop and hands its connection back at once.

    sync_to_async runs it in the request's thread, whose database connection would
    otherwise stay open until the response is sent, i.e. through the whole bank wait: about
    a hundred slow checkouts would hold every connection PostgreSQL has. Closed here, the
    connection goes back to the pool (or is closed) before the bank is awaited.
    """

    def run(**kwargs):
        try:
            return function(**kwargs)
        finally:
            _release_connection()

    return sync_to_async(run)


# One bound per event loop (daphne runs one per process; tests and async_to_sync make others):
# an asyncio semaphore belongs to the loop it first made wait. Values: (size, semaphore).
_checkout_slots_by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checkout_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    size = settings.CHECKOUT_CONCURRENCY
    slots = _checkout_slots_by_loop.get(loop)
    if slots is None or slots[0] != size:
        slots = _checkout_slots_by_loop[loop] = (size, asyncio.Semaphore(size))
    return slots[1]


async def _in_turn(function, **kwargs):
    """Run a checkout transaction once one of the process's CHECKOUT_CONCURRENCY turns is free.

    Each checkout's sync work runs in a thread of its own (one per request), and every
    running thread takes its share of the GIL: two hundred checkouts at once would leave a
    catalog page a two-hundredth of the CPU. Queued here instead, on the event loop, they
    wait their turn holding nothing, not even a database connection. A turn covers one
    transaction, never the bank's answer, so the bank waits of a whole wave still overlap.
    """
    slots = _checkout_slots()
    if slots.locked():
        # Queued: first the request's thread hands back the connection it read the session
        # and the user with, or the shoppers waiting for a turn would hold every connection
        # of the pool, and the rest of the site would wait for them.
        await sync_to_async(_release_connection)()
    async with slots:
        return await _in_own_connection(function)(**kwargs)


async def _with_database_retries(function, **kwargs):
    """Run a transaction, retrying on a fresh connection while the database is unreachable."""
    for delay in (*CAPTURE_RETRY_DELAYS, None):
        try:
            return await _in_turn(function, **kwargs)
        except (OperationalError, InterfaceError) as error:
            if delay is None:
                raise
            logger.warning("%s failed (%s); retrying in %.2f s", function.__name__, error, delay)
            await asyncio.sleep(delay)


async def place_order(
    *,
    user,
    checkout_token: str,
    card: Card,
    cart_fingerprint: str | None = None,
    shipping: ShippingAddress | None = None,
    email: str = "",
) -> Order:
    """Reserve the cart's stock, charge the card and return the order.

    The order is PAID, or still PENDING when the bank has not answered within
    settings.PAYMENT_TIMEOUT: the payment then settles in the background (or through
    reconciliation) and the shopper is told live. `cart_fingerprint` is the cart the
    shopper was shown (cart_fingerprint()); a cart that changed since is refused, so the
    amount charged is always the amount on the page. The order keeps a copy of `shipping`
    and sends its receipt to `email` (the account's address when empty).

    Raise OutOfStock / EmptyCart / CheckoutExpired / CartChanged / PaymentInProgress before
    any charge, a PaymentError (its message safe to show) when the bank refuses (the
    reservation is then released), and PaymentNotRecorded when the bank took the money but
    the database could not record it. The same checkout token always ends in the same
    single order and charge.
    """
    order = await _in_turn(
        reserve_order,
        user=user,
        checkout_token=checkout_token,
        cart_fingerprint=cart_fingerprint,
        shipping=shipping,
        email=email,
    )
    if order.status != Order.Status.PENDING:
        return order  # A resubmitted form: this checkout already ended.
    attempt = _PaymentAttempt(order=order, card=card)
    payment = asyncio.ensure_future(attempt.run())
    _payments_in_flight.add(payment)
    payment.add_done_callback(_payments_in_flight.discard)
    try:
        return await asyncio.wait_for(asyncio.shield(payment), timeout=settings.PAYMENT_TIMEOUT)
    except asyncio.TimeoutError:
        attempt.shopper_waiting = False
        payment.add_done_callback(_log_background_failure)
        logger.warning(
            "Order %s: no answer from the bank within %s s; the payment goes on in the background",
            order.number,
            settings.PAYMENT_TIMEOUT,
        )
        # Nothing changes in the database here, so there is no transaction to send it in:
        # staff hear of a payment left hanging at once, whatever settles it later.
        payment_overdue.send(sender=Order, order=order)
        return order


class _PaymentAttempt:
    """One charge of a reserved order, from the bank's call to the capture or the release."""

    def __init__(self, *, order: Order, card: Card):
        self.order = order
        self.card = card
        # While the shopper still waits, a refusal removes the pending order and they pay
        # again from the same cart. Once they were told "being confirmed" and shown the
        # order, a refusal ends it as cancelled instead, with a notification.
        self.shopper_waiting = True

    async def run(self) -> Order:
        order = self.order
        try:
            charge = await asyncio.wait_for(
                get_gateway().charge(
                    amount=order.total,
                    currency=order.currency,
                    card=self.card,
                    idempotency_key=checkout_idempotency_key(order.checkout_token),
                ),
                # The shopper waits PAYMENT_TIMEOUT; the call goes on as long again in the
                # background. Past that it is abandoned and reconciliation asks the bank.
                timeout=2 * settings.PAYMENT_TIMEOUT,
            )
        except asyncio.TimeoutError:
            logger.warning("Order %s: the bank never answered; left for reconciliation", order.number)
            return order
        except PaymentError as error:
            await self._release(error)
            raise
        except Exception as error:
            logger.exception("Order %s: the gateway failed unexpectedly", order.number)
            await self._release(BankUnavailable())
            raise BankUnavailable() from error
        try:
            order = await _with_database_retries(capture_payment, order_id=order.pk, charge=charge)
        except (OperationalError, InterfaceError) as error:
            logger.error(
                "Order %s: charge %s taken but not recorded (%s); left for reconciliation",
                order.number,
                charge.reference,
                error,
            )
            raise PaymentNotRecorded(order.number) from error
        if order.status == Order.Status.CANCELLED:
            # Staff cancelled the order while the bank was answering: give the money back.
            await _in_own_connection(refund_order_payment)(order=order)
            raise PaymentError("This order was cancelled while your payment was processing; the charge was refunded.")
        return order

    async def _release(self, error: PaymentError) -> None:
        await _with_database_retries(
            release_reservation,
            order_id=self.order.pk,
            error=error,
            card_last4=self.card.last4,
            keep_order=not self.shopper_waiting,
        )


def _log_background_failure(payment: asyncio.Task) -> None:
    # Nobody awaits a payment the shopper stopped waiting for: say how it ended.
    if payment.cancelled():
        return
    error = payment.exception()
    if isinstance(error, PaymentError):
        logger.info("A background payment was refused: %s", error.message)
    elif error is not None:
        logger.error("A background payment failed: %r", error)


def reserve_order(
    *,
    user,
    checkout_token: str,
    cart_fingerprint: str | None = None,
    shipping: ShippingAddress | None = None,
    email: str = "",
) -> Order:
    """Transaction 1: take the cart's units out of stock into a PENDING order.

    Return the existing order for a resubmitted token. Refuse a cart that is already
    being paid under another token (another window, another device), and a cart that
    differs from `cart_fingerprint`, the one the shopper was shown.
    """
    with transaction.atomic():
        # Lock the cart first, then products in pk order: every path takes locks in that
        # order, so concurrent checkouts wait for each other instead of deadlocking. The
        # cart lock also makes two sessions of one user paying at once take turns here.
        cart = Cart.objects.select_for_update().filter(user=user).only("pk").first()
        # This token's order (a resubmission), and any order of this user still being paid: one query.
        found = list(Order.objects.filter(Q(checkout_token=checkout_token) | Q(user=user, status=Order.Status.PENDING)))
        if existing := next((order for order in found if order.checkout_token == checkout_token), None):
            if existing.user_id != user.pk or (
                cart_fingerprint is not None and cart_fingerprint != order_fingerprint(existing)
            ):
                raise CheckoutExpired("This checkout has expired. Please review your cart and try again.")
            return existing
        if in_progress := next(iter(found), None):
            raise PaymentInProgress(
                f"Your cart is already being paid (order {in_progress.number}), in another window or device. "
                "Please wait for that payment to finish; we will tell you how it went."
            )
        # The lines with their products, locking the products only, in pk order (the lock
        # order every path uses) and at their latest committed state: one query.
        lines = (
            list(
                CartLine.objects.filter(cart=cart)
                .select_related("product")
                .select_for_update(of=("product",))
                .order_by("product_id")
            )
            if cart
            else []
        )
        if not lines:
            raise EmptyCart("Your cart is empty.")
        products = {line.product_id: line.product for line in lines}
        problems = [
            problem
            for line in lines
            if (problem := availability_problem(product=products[line.product_id], quantity=line.quantity))
        ]
        if problems:
            raise OutOfStock(" ".join(problems))
        if cart_fingerprint is not None and cart_fingerprint != fingerprint(
            (line.product_id, line.quantity, products[line.product_id].price) for line in lines
        ):
            raise CartChanged("Your cart changed since this page was shown. Please check the total and pay again.")

        total = sum((products[line.product_id].price * line.quantity for line in lines), Decimal("0")).quantize(CENT)
        order = Order.objects.create(
            user=user,
            total=total,
            currency=settings.SHOP_CURRENCY,
            checkout_token=checkout_token,
            email=email,
            **(shipping.order_fields() if shipping is not None else {}),
        )
        order_lines = OrderLine.objects.bulk_create(
            OrderLine(
                order=order,
                product=products[line.product_id],
                product_name=products[line.product_id].name,
                unit_price=products[line.product_id].price,
                quantity=line.quantity,
            )
            for line in lines
        )
        take_order_stock(order=order, lines=order_lines, locked=products)
        OrderEvent.objects.create(
            order=order, to_status=Order.Status.PENDING, message="Stock reserved; awaiting the bank."
        )
        # Written with the order: if this checkout never hears from the bank (a crash, a
        # timeout, the database down at capture), the worker still settles the order.
        tasks.schedule_reconciliation()
    return order


def capture_payment(*, order_id: int, charge: ChargeResult) -> Order:
    """Transaction 2: record the captured charge and mark the order PAID."""
    with transaction.atomic():
        # The shopper comes along (unlocked): order_placed's receivers address them.
        order = Order.objects.select_for_update(of=("self",)).select_related("user").get(pk=order_id)
        captured = {
            "order": order,
            "user_id": order.user_id,
            "status": Payment.Status.CAPTURED,
            "amount": charge.amount,
            "currency": charge.currency,
            "reference": charge.reference,
            "card_last4": charge.card_last4,
        }
        key = checkout_idempotency_key(order.checkout_token)
        if order.status != Order.Status.PENDING:
            # A concurrent retry of this checkout captured it first, or staff cancelled it meanwhile.
            Payment.objects.get_or_create(idempotency_key=key, defaults=captured)
            return order
        # A pending order has no payment under its key yet: the only writers of one (this
        # function and release_reservation) move the order on under this same lock. One
        # INSERT, no savepoint; a conflict is still never an error.
        Payment.objects.bulk_create([Payment(idempotency_key=key, **captured)], ignore_conflicts=True)
        record_status(order=order, status=Order.Status.PAID, message=f"Payment {charge.reference} captured.")
        _take_ordered_units_out_of_cart(order)
        order_placed.send(sender=Order, order=order)
    logger.info("Order %s paid (%s %s)", order.number, order.total, order.currency)
    return order


def _take_ordered_units_out_of_cart(order: Order) -> None:
    # Units added to the cart while the bank was answering (another tab) stay in it.
    ordered = OrderLine.objects.filter(order=order, product_id=OuterRef("product_id")).values("quantity")[:1]
    emptied = []
    for line in CartLine.objects.filter(cart__user_id=order.user_id).annotate(ordered=Subquery(ordered)):
        if line.ordered is None:
            continue
        if line.quantity > line.ordered:
            line.quantity -= line.ordered
            line.save(update_fields=["quantity"])
        else:
            emptied.append(line.pk)
    if emptied:
        CartLine.objects.filter(pk__in=emptied).delete()


def release_reservation(*, order_id: int, error: PaymentError, card_last4: str, keep_order: bool = False) -> None:
    """Transaction 2 after a refusal: put the stock back and record the failure.

    The pending order is removed, so the shopper simply pays again from the same cart;
    with `keep_order` (the shopper was already shown the order: a timeout, reconciliation)
    it ends as cancelled instead, which tells them.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None or order.status != Order.Status.PENDING:
            return  # A concurrent retry of this checkout already released it.
        if keep_order:
            change_order_status(
                order=order, status=Order.Status.CANCELLED, message=f"The payment did not go through: {error.message}"
            )
        else:
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
                "order": order if keep_order else None,
            },
        )
        if not keep_order:
            order.delete()
    logger.warning("Order %s not paid, reservation released: %s", order.number, error.message)


# Reconciliation --------------------------------------------------------------------------


@dataclass
class ReconciliationReport:
    paid: int = 0
    released: int = 0
    unresolved: int = 0  # The bank could not be asked: tried again next time.


async def areconcile_payments(*, older_than: float) -> ReconciliationReport:
    """Settle every PENDING order older than `older_than` seconds from the bank's own answer.

    Charged: the order becomes PAID (Payment, event, the usual notification and email).
    Not charged: resolve_charge() made sure it never will be; the stock goes back and the
    order ends cancelled, which tells the shopper. Running it again changes nothing.
    """
    if older_than < 0:
        raise ValueError("older_than must not be negative")
    cutoff = timezone.now() - timedelta(seconds=older_than)
    report = ReconciliationReport()
    for order in await _in_own_connection(_stale_pending_orders)(cutoff=cutoff):
        key = checkout_idempotency_key(order.checkout_token)
        try:
            charge = await get_gateway().resolve_charge(idempotency_key=key)
        except Exception as error:
            logger.warning("Order %s: could not ask the bank (%r); tried again next time", order.number, error)
            report.unresolved += 1
            continue
        if charge is None:
            await _with_database_retries(
                release_reservation,
                order_id=order.pk,
                error=PaymentError("The bank has no record of this payment; nothing was charged."),
                card_last4="",
                keep_order=True,
            )
            report.released += 1
            continue
        settled = await _with_database_retries(capture_payment, order_id=order.pk, charge=charge)
        if settled.status == Order.Status.CANCELLED:
            # Cancelled by staff while the payment was unsettled: the money goes back.
            await _in_own_connection(refund_order_payment)(order=settled)
        report.paid += 1
    logger.info("Reconciliation: %s", report)
    return report


def reconcile_payments(*, older_than: float) -> ReconciliationReport:
    """Sync entry point of areconcile_payments() (commands, tasks)."""
    return async_to_sync(areconcile_payments)(older_than=older_than)


def _stale_pending_orders(*, cutoff) -> list[Order]:
    return list(Order.objects.filter(status=Order.Status.PENDING, created_at__lt=cutoff).order_by("created_at"))

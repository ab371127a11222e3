"""Stock: every change is a delta applied under the products' row locks and recorded as a movement.

Nothing else writes Product.stock (Product.save() leaves it out of its UPDATE): staff
receive, write off and correct units here; checkout takes an order's units and the order
pipeline gives them back here. Each change locks the products in pk order (the order
every path uses, so two changes never deadlock), refuses to go below zero, and writes one
StockMovement a product with the exact stock it left behind.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Case, F, IntegerField, Value, When

from ..models import Order, OrderLine, Product, StockMovement
from ..signals import stock_changed
from .errors import InsufficientStock, InvalidStockChange

# The largest stock a product may hold: what PostgreSQL's integer column stores. Bigger
# numbers are refused with a message instead of failing in the database.
MAX_STOCK = 2_147_483_647

# Staff move stock for these reasons; sold and returned units move with an order.
STAFF_REASONS = (StockMovement.Reason.RECEIVED, StockMovement.Reason.WRITTEN_OFF, StockMovement.Reason.CORRECTION)


@dataclass(frozen=True)
class _Change:
    product_id: int
    delta: int


def _move_stock(
    changes: list[_Change],
    *,
    reason: str,
    actor=None,
    order: Order | None = None,
    note: str = "",
    locked: Mapping[int, Product] | None = None,
) -> list[StockMovement]:
    """Apply every change or none, under the products' row locks; record one movement each.

    Runs inside the caller's transaction (or opens one): the locks are held until it ends.
    Costs three queries whatever the number of products: lock, update, insert. `locked`: the
    products, as the caller's transaction already locked them (select_for_update), which
    saves the lock and the savepoint: that caller's transaction ends at any error.
    """
    deltas: dict[int, int] = {}
    for change in changes:
        deltas[change.product_id] = deltas.get(change.product_id, 0) + change.delta
    deltas = {product_id: delta for product_id, delta in deltas.items() if delta}
    if not deltas:
        return []
    with transaction.atomic(savepoint=locked is None):
        if locked is None:
            # pk order, as in reserve_order and every other path: concurrent changes wait, never deadlock.
            locked = {
                product.pk: product
                for product in Product.objects.select_for_update()
                .filter(pk__in=deltas)
                .order_by("pk")
                .only("pk", "name", "stock")
            }
        for product_id, delta in deltas.items():
            product = locked.get(product_id)
            if product is None:
                raise InvalidStockChange("This product no longer exists.")
            if problem := _level_problem(product=product, delta=delta, for_order=order is not None):
                error = InsufficientStock if product.stock + delta < 0 else InvalidStockChange
                raise error(problem)
        # One UPDATE for every product, each by its own delta relative to the locked row.
        Product.objects.filter(pk__in=deltas).update(
            stock=Case(
                *(When(pk=product_id, then=F("stock") + Value(delta)) for product_id, delta in deltas.items()),
                default=F("stock"),
                output_field=IntegerField(),
            )
        )
        movements = StockMovement.objects.bulk_create(
            StockMovement(
                product=locked[product_id],
                delta=delta,
                reason=reason,
                stock_after=locked[product_id].stock + delta,
                actor=actor,
                order=order,
                note=note[:255],
            )
            for product_id, delta in sorted(deltas.items())
        )
        # Last step, under the locks: listeners (carts to warn, shoppers waiting for a restock)
        # write in this transaction and push only after it commits.
        stock_changed.send(sender=Product, movements=movements)
    return movements


def _units(count: int) -> str:
    return f"{count:,} unit" if count == 1 else f"{count:,} units"


def _level_problem(*, product: Product, delta: int, for_order: bool = False) -> str | None:
    if product.stock + delta < 0:
        if for_order:  # Said to the shopper, as the cart says it.
            return (
                f"{product.name} is sold out."
                if product.stock <= 0
                else f"Only {product.stock} left of {product.name}."
            )
        return f"Cannot remove {_units(-delta)} of {product.name}: only {product.stock} in stock."
    if product.stock + delta > MAX_STOCK:
        return f"Cannot add {_units(delta)} to {product.name}: stock cannot exceed {MAX_STOCK:,} units."
    return None


def _staff_change_problem(*, delta: int, reason: str) -> str | None:
    if reason not in STAFF_REASONS:
        return f"{reason!r} is not a reason staff can give; sold and returned units move with their order."
    if not isinstance(delta, int) or isinstance(delta, bool):
        return "A stock change is a whole number of units."
    if delta == 0:
        return "A stock change needs a number of units other than zero."
    if abs(delta) > MAX_STOCK:
        return f"A stock change is at most {MAX_STOCK:,} units."
    if reason == StockMovement.Reason.RECEIVED and delta < 0:
        return "Receiving adds units: give a number above zero (a write-off removes units)."
    if reason == StockMovement.Reason.WRITTEN_OFF and delta > 0:
        return "A write-off removes units: give a number below zero (receiving adds units)."
    return None


def stock_change_problem(*, product: Product, delta: int, reason: str) -> str | None:
    """Say why staff cannot change `product`'s stock by `delta` for `reason`, or return None.

    Judged on `product.stock` as loaded, for a form to answer early; adjust_stock judges
    again under the row lock, and its answer is the one that counts.
    """
    return _staff_change_problem(delta=delta, reason=reason) or _level_problem(product=product, delta=delta)


def _check_quantity(quantity: int) -> None:
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        raise InvalidStockChange("The number of units must be a whole number of at least 1.")


def adjust_stock(*, product: Product, delta: int, reason: str, actor=None, note: str = "") -> StockMovement:
    """Add (`delta` > 0) or remove (`delta` < 0) units of `product` for a staff reason.

    `reason` is received (delta > 0), written_off (delta < 0) or correction (either).
    Raise InsufficientStock if fewer than -`delta` units are in stock, InvalidStockChange
    for any other change that cannot be made. `product.stock` is updated to the new stock.
    """
    if problem := _staff_change_problem(delta=delta, reason=reason):
        raise InvalidStockChange(problem)
    (movement,) = _move_stock([_Change(product.pk, delta)], reason=reason, actor=actor, note=note)
    product.stock = movement.stock_after
    return movement


def receive_stock(*, product: Product, quantity: int, actor=None, note: str = "") -> StockMovement:
    """Add `quantity` delivered units to `product`'s stock."""
    _check_quantity(quantity)
    return adjust_stock(product=product, delta=quantity, reason=StockMovement.Reason.RECEIVED, actor=actor, note=note)


def write_off_stock(*, product: Product, quantity: int, actor=None, note: str = "") -> StockMovement:
    """Take `quantity` units (broken, lost, expired) out of `product`'s stock."""
    _check_quantity(quantity)
    return adjust_stock(
        product=product, delta=-quantity, reason=StockMovement.Reason.WRITTEN_OFF, actor=actor, note=note
    )


def correct_stock(*, product: Product, delta: int, actor=None, note: str = "") -> StockMovement:
    """Correct `product`'s stock by `delta` units after a count found a difference."""
    return adjust_stock(product=product, delta=delta, reason=StockMovement.Reason.CORRECTION, actor=actor, note=note)


def receive_stock_batch(*, quantities: Mapping[int, int], actor=None, note: str = "") -> list[StockMovement]:
    """Add units to several products at once (product pk -> units), all or none.

    Products with zero units are left out. Raise InvalidStockChange if a quantity is
    negative or too large, or if a product no longer exists.
    """
    for quantity in quantities.values():
        if quantity != 0:
            _check_quantity(quantity)
            if problem := _staff_change_problem(delta=quantity, reason=StockMovement.Reason.RECEIVED):
                raise InvalidStockChange(problem)
    return _move_stock(
        [_Change(product_id, quantity) for product_id, quantity in quantities.items() if quantity],
        reason=StockMovement.Reason.RECEIVED,
        actor=actor,
        note=note,
    )


def take_order_stock(
    *,
    order: Order,
    actor=None,
    lines: Iterable[OrderLine] | None = None,
    locked: Mapping[int, Product] | None = None,
) -> list[StockMovement]:
    """Take the units of `order`'s lines out of stock (a sale), inside the caller's transaction.

    Raise InsufficientStock if a product has fewer units than its line needs: the caller
    checks availability first, so this is the last guard, and the whole change rolls back.
    A caller that has just written the lines passes them (`lines`), and the products it
    holds under select_for_update in this transaction (`locked`, by pk): nothing is read again.
    """
    if lines is None:
        pairs = order.lines.values_list("product_id", "quantity")
    else:
        pairs = [(line.product_id, line.quantity) for line in lines]
    return _move_stock(
        [_Change(product_id, -quantity) for product_id, quantity in pairs if product_id],
        reason=StockMovement.Reason.SOLD,
        actor=actor,
        order=order,
        note=f"Order {order.number}",
        locked=locked,
    )


def return_order_stock(order: Order, *, actor=None) -> list[StockMovement]:
    """Put the units of `order`'s lines back in stock (a cancel, a refund, a refused payment)."""
    lines = order.lines.values_list("product_id", "quantity")
    return _move_stock(
        [_Change(product_id, quantity) for product_id, quantity in lines if product_id],
        reason=StockMovement.Reason.RETURNED,
        actor=actor,
        order=order,
        note=f"Order {order.number}",
    )

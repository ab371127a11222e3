"""Domain actions of the shop. Each owns its transaction; views, admin and commands call them.

One module a job: cart, checkout, orders (the status pipeline) and stock. Callers import
the package (`from shop import services`) and use the names below.
"""

from .cart import (
    add_to_cart,
    availability_problem,
    cart_fingerprint,
    get_cart,
    merge_carts,
    remove_from_cart,
    update_cart_line,
)
from .checkout import (
    PaymentNotRecorded,
    ReconciliationReport,
    areconcile_payments,
    capture_payment,
    checkout_idempotency_key,
    place_order,
    reconcile_payments,
    release_reservation,
    reserve_order,
)
from .errors import (
    CartChanged,
    CheckoutExpired,
    EmptyCart,
    InsufficientStock,
    InvalidStockChange,
    InvalidTransition,
    OutOfStock,
    PaymentInProgress,
    QuantityNotAllowed,
    ShopError,
)
from .orders import ALLOWED_TRANSITIONS, change_order_status, refund_order_payment, transition_problem
from .stock import (
    MAX_STOCK,
    STAFF_REASONS,
    adjust_stock,
    correct_stock,
    receive_stock,
    receive_stock_batch,
    return_order_stock,
    stock_change_problem,
    take_order_stock,
    write_off_stock,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "CartChanged",
    "CheckoutExpired",
    "EmptyCart",
    "InsufficientStock",
    "InvalidStockChange",
    "InvalidTransition",
    "MAX_STOCK",
    "OutOfStock",
    "PaymentInProgress",
    "PaymentNotRecorded",
    "ReconciliationReport",
    "areconcile_payments",
    "reconcile_payments",
    "QuantityNotAllowed",
    "STAFF_REASONS",
    "ShopError",
    "add_to_cart",
    "adjust_stock",
    "availability_problem",
    "capture_payment",
    "cart_fingerprint",
    "change_order_status",
    "checkout_idempotency_key",
    "correct_stock",
    "get_cart",
    "merge_carts",
    "place_order",
    "receive_stock",
    "receive_stock_batch",
    "refund_order_payment",
    "release_reservation",
    "remove_from_cart",
    "reserve_order",
    "return_order_stock",
    "stock_change_problem",
    "take_order_stock",
    "transition_problem",
    "update_cart_line",
    "write_off_stock",
]

"""Errors of the shop's domain actions. Every message is safe to show the shopper."""


class ShopError(Exception):
    """A request the shop cannot carry out. The message is safe to show the shopper."""

    @property
    def message(self) -> str:
        return str(self)


class OutOfStock(ShopError):
    pass


class InsufficientStock(OutOfStock):
    """A stock change would leave fewer than zero units."""


class InvalidStockChange(ShopError):
    """A stock change that makes no sense: zero units, the wrong sign for its reason, too many."""


class QuantityNotAllowed(ShopError):
    pass


class EmptyCart(ShopError):
    pass


class CheckoutExpired(ShopError):
    pass


class InvalidTransition(ShopError):
    pass


class CartChanged(ShopError):
    """The cart is not the one the shopper was shown: paying would charge another amount."""


class PaymentInProgress(ShopError):
    """The cart is being paid already (another window or device): it cannot be paid twice."""

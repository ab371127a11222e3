"""Back in stock: a signed-in shopper asks to be told when a sold-out product returns.

The request (a StockAlert row) is taken under the product's row lock, the lock every stock
movement takes, so it is either made before a restock (which then answers it) or refused
because the product is in stock. A restock answers every request in its own transaction:
one notification each (live and in the inbox), and the requests are deleted with it, so
nobody is told twice.
"""

from collections.abc import Mapping

from django.db import transaction

from shop.models import Product

from . import services
from .models import Notification, StockAlert


class StockAlertRefused(Exception):
    """A request that cannot be taken; the message is safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def request_stock_alert(*, user, product: Product) -> StockAlert:
    """Note that `user` wants to hear when the sold-out `product` is back; asking twice is one request.

    Raise StockAlertRefused if the product is in stock (add it to the cart instead) or gone.
    """
    if not user.is_authenticated:
        raise StockAlertRefused("Log in to be told when it is back.")
    with transaction.atomic():
        # The lock stock movements take: a restock committing now is either seen here (refused:
        # it is in stock) or comes after this request commits and answers it.
        locked = Product.objects.select_for_update().filter(pk=product.pk).only("pk", "name", "stock", "is_active")
        locked = locked.first()
        if locked is None or not locked.is_active:
            raise StockAlertRefused("This product is no longer available.")
        if locked.stock > 0:
            raise StockAlertRefused(f"{locked.name} is in stock: you can add it to your cart now.")
        alert, _ = StockAlert.objects.get_or_create(user=user, product=locked)
    return alert


def cancel_stock_alert(*, user, product: Product) -> bool:
    """Forget `user`'s request for `product`; False if there was none."""
    deleted, _ = StockAlert.objects.filter(user=user, product=product).delete()
    return bool(deleted)


def has_stock_alert(*, user, product: Product) -> bool:
    return user.is_authenticated and StockAlert.objects.filter(user=user, product=product).exists()


def tell_restocked(*, stock: Mapping[int, int]) -> int:
    """Answer every request for the products just restocked (product pk -> units now); return how many.

    Runs inside the restock's transaction, with the products locked: the notifications and
    the deletion of the requests commit, or roll back, with the stock.
    """
    alerts = list(StockAlert.objects.filter(product_id__in=stock).select_related("user", "product").order_by("pk"))
    for alert in alerts:
        product = alert.product
        units = stock[product.pk]
        services.notify(
            recipient=alert.user,
            kind=Notification.Kind.BACK_IN_STOCK,
            title=f"{product.name} is back in stock",
            body=f"You asked us to tell you: {units} {'is' if units == 1 else 'are'} available now.",
            url=product.get_absolute_url(),
        )
    if alerts:
        StockAlert.objects.filter(pk__in=[alert.pk for alert in alerts]).delete()
    return len(alerts)

"""Stock: units move out of stock into orders and back, always under the products' row locks."""

from django.db.models import F

from ..models import Order, Product


def return_order_stock(order: Order) -> None:
    product_ids = sorted(line.product_id for line in order.lines.all() if line.product_id)
    # Same pk order as reserve_order, so a release and a checkout never deadlock.
    list(Product.objects.select_for_update().filter(pk__in=product_ids).order_by("pk"))
    for line in order.lines.all():
        if line.product_id:
            Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)

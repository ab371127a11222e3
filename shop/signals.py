"""Domain events of the shop, for other apps to listen to without the shop importing them.

Each is sent by a service inside the transaction that makes the change, as its last
step. A receiver's own writes (a notification row, say) therefore commit or roll back
together with the order, and nothing is announced for a change that never commits.
Receivers must defer anything that leaves the database (a push, an email) with
transaction.on_commit.
"""

from django.dispatch import Signal

# An order was paid and is now confirmed. Sent with order=Order.
order_placed = Signal()

# Staff (or the system) moved an order to another status. Sent with order=Order,
# previous_status=str, actor=User | None.
order_status_changed = Signal()

# Staff moved many orders to one status at once (an admin bulk action), in one transaction.
# Sent once, instead of order_status_changed for each, with changes=list[(Order, previous_status)]
# (the orders with their users loaded) and actor=User | None: a receiver of one must handle
# the other, and can write its rows for all the orders in a few statements.
orders_status_changed = Signal()

# Stock moved (shop.services.stock, every path: checkout, returns, staff). Sent with
# movements=list[StockMovement], one a product, each with its product (name and the stock
# as locked), delta, stock_after and order (set for sales and returns). Sent inside the
# transaction, with the products' rows still locked.
stock_changed = Signal()

# An order's payment outlived PAYMENT_TIMEOUT: the shopper was sent to the order page and the
# order stays PENDING until the bank answers or reconciliation settles it. Sent with
# order=Order from async code, outside any transaction: a receiver must not query the database.
payment_overdue = Signal()

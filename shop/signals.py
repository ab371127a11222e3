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

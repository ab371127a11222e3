"""Template tags of the live signals: the sockets' page configuration, and the back-in-stock form."""

from django import template
from django.urls import reverse

from .. import alerts

register = template.Library()


@register.simple_tag(takes_context=True)
def live_signals_config(context, *, admin: bool = False) -> dict:
    """Return the configuration of the page's live-signal sockets (no query: the context has it all).

    `cart`: only when the shop's header counts items in this session's cart (cart_item_count),
    so a page without a cart opens no cart socket. `staff`: only for a staff user.
    """
    user = context.get("user")
    config = {"cart": None, "staff": None}
    if not admin and context.get("cart_item_count"):
        config["cart"] = {"socket_path": "/ws/cart/", "cart_url": reverse("shop:cart")}
    if user is not None and user.is_authenticated and user.is_staff:
        config["staff"] = {
            "socket_path": "/ws/staff/",
            "order_list_path": reverse("admin:shop_order_changelist"),
        }
    return config


@register.inclusion_tag("notifications/includes/stock_alert.html", takes_context=True)
def stock_alert_form(context, product) -> dict:
    """The "tell me when it is back" box of a sold-out product's page, in the state this user left it."""
    user = context.get("user")
    request = context.get("request")
    signed_in = user is not None and user.is_authenticated
    return {
        "product": product,
        "signed_in": signed_in,
        "requested": signed_in and alerts.has_stock_alert(user=user, product=product),
        "csrf_token": context.get("csrf_token"),
        "next": request.get_full_path() if request is not None else product.get_absolute_url(),
        "login_url": reverse("login") + "?next=" + product.get_absolute_url(),
    }

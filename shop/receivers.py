"""Receivers of other apps' signals, connected in ShopConfig.ready()."""

from django.contrib import messages

from . import services

SESSION_CART_KEY = "cart_id"


def merge_session_cart_on_login(sender, request, user, **kwargs):
    """Keep what a shopper put in the cart before signing in."""
    if request is None or not hasattr(request, "session"):
        return
    cart_id = request.session.pop(SESSION_CART_KEY, None)
    session_cart = services.get_cart(cart_id=cart_id) if cart_id else None
    if session_cart is None:
        return
    notes = services.merge_carts(source=session_cart, target=services.get_cart(user=user, create=True))
    for note in notes:
        messages.warning(request, f"Your cart was adjusted: {note}")

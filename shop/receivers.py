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


def say_logged_in(sender, request, user, **kwargs):
    """Tell the shopper the login worked (a new account gets its own welcome from the signup view)."""
    if request is None or getattr(request, "shop_new_account", False):
        return
    messages.success(request, f"Welcome back, {user.get_username()}! You are logged in.", fail_silently=True)


def say_logged_out(sender, request, user, **kwargs):
    if request is None:
        return
    # Added before the session is flushed; the message storage writes it into the new session.
    messages.info(request, "You are logged out. See you soon!", fail_silently=True)

from .receivers import SESSION_CART_KEY
from .services import get_cart


def cart_summary(request):
    """Give every page the number of items in the shopper's cart, for the header."""
    user = getattr(request, "user", None)
    cart = get_cart(user=user, cart_id=request.session.get(SESSION_CART_KEY)) if hasattr(request, "session") else None
    return {"cart_item_count": cart.item_count if cart else 0}

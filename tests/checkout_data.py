"""What a checkout form posts besides the card (issue 9): the shipping address and the receipt email.

Checkout posts in the tests, the bench clients and the browser helpers all fill these in,
as a shopper must.
"""

SHIPPING_ADDRESS = {
    "full_name": "Alice Martin",
    "line1": "12 Rue de la Paix",
    "line2": "Floor 3",
    "city": "Paris",
    "postal_code": "75002",
    "country": "FR",
    "phone": "+33 1 23 45 67 89",
}


def shipping_fields(email: str = "alice@example.com", **overrides: str) -> dict[str, str]:
    """The address and receipt-email fields of a checkout post; `email` should be the shopper's."""
    return {**SHIPPING_ADDRESS, "email": email, **overrides}

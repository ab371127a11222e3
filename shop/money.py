"""One money format for every page, toast, notification and email: "€1,234.50"."""

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

# Currencies written with a symbol in front; any other is written after the amount ("12.50 CHF").
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}
CENT = Decimal("0.01")


def format_money(amount, currency: str | None = None) -> str:
    """Format `amount` of `currency` (the shop's currency by default) for a shopper to read."""
    currency = (currency or settings.SHOP_CURRENCY).upper()
    value = Decimal(str(amount)).quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    digits = f"{abs(value):,.2f}"
    if symbol := CURRENCY_SYMBOLS.get(currency):
        return f"{sign}{symbol}{digits}"
    return f"{sign}{digits} {currency}"

"""Template filters of the storefront: `{% load shop_extras %}`."""

from django import template

from ..money import format_money

register = template.Library()


@register.filter
def money(amount, currency: str = "") -> str:
    """Format an amount the one way the shop writes money: `{{ order.total|money:order.currency }}`."""
    if amount is None or amount == "":
        return ""
    return format_money(amount, currency or None)

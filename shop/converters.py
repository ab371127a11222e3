"""URL converters of the shop."""

from .models import ORDER_NUMBER_LENGTH


class OrderNumberConverter:
    """An order number as printed: letters and digits (lower case is accepted, as typed)."""

    regex = f"[0-9A-Za-z]{{1,{ORDER_NUMBER_LENGTH}}}"

    def to_python(self, value: str) -> str:
        return value.upper()

    def to_url(self, value: str) -> str:
        return value

import re
from datetime import date

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core import validators

from .models import Product
from .payments import Card

CHECKOUT_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def luhn_is_valid(number: str) -> bool:
    """Return True if `number` passes the Luhn checksum every card number carries."""
    total = 0
    for position, digit in enumerate(int(char) for char in reversed(number)):
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class ProductChoiceField(forms.ModelChoiceField):
    default_error_messages = {
        "invalid_choice": "That product is not in our catalog.",
        "required": "Choose a product.",
    }


class CartLineForm(forms.Form):
    """A product and a quantity, as posted by the add-to-cart and update forms."""

    min_quantity = 1

    product = ProductChoiceField(queryset=Product.objects.available(), widget=forms.HiddenInput)
    quantity = forms.IntegerField(
        initial=1,
        error_messages={
            "required": "Enter a quantity.",
            "invalid": "Enter a whole number.",
            "min_value": "Enter %(limit_value)s or more.",
            "max_value": "You can buy at most %(limit_value)s per order.",
        },
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["quantity"]
        field.min_value, field.max_value = self.min_quantity, settings.SHOP_MAX_QUANTITY_PER_LINE
        field.validators = [
            validators.MinValueValidator(field.min_value),
            validators.MaxValueValidator(field.max_value),
        ]
        field.widget.attrs.update({"min": field.min_value, "max": field.max_value, "inputmode": "numeric"})


class CartUpdateForm(CartLineForm):
    """Like CartLineForm, but zero is allowed: it removes the line."""

    min_quantity = 0


class CartRemoveForm(forms.Form):
    product = ProductChoiceField(queryset=Product.objects.all(), widget=forms.HiddenInput)


class UnechoedTextInput(forms.TextInput):
    """A text input that never renders its value back: card data is not put in a page."""

    def format_value(self, value):
        return None


class CheckoutForm(forms.Form):
    """A card, checked as far as possible before the bank is asked."""

    number = forms.CharField(
        label="Card number",
        max_length=23,
        widget=UnechoedTextInput(
            attrs={"autocomplete": "cc-number", "inputmode": "numeric", "placeholder": "4242 4242 4242 4242"}
        ),
    )
    expiry = forms.CharField(
        label="Expiry (MM/YY)",
        max_length=9,  # "MM / YYYY": clean_expiry accepts spaces around the slash and four-digit years.
        widget=forms.TextInput(attrs={"autocomplete": "cc-exp", "inputmode": "numeric", "placeholder": "MM/YY"}),
    )
    cvc = forms.CharField(
        label="CVC",
        max_length=4,
        widget=UnechoedTextInput(attrs={"autocomplete": "cc-csc", "inputmode": "numeric", "placeholder": "123"}),
    )
    # Rendered by the template from the session, not from posted data: see views.checkout.
    checkout_token = forms.CharField(widget=forms.HiddenInput)

    def clean_number(self) -> str:
        number = re.sub(r"[\s-]", "", self.cleaned_data["number"])
        if not number.isdigit() or not 12 <= len(number) <= 19:
            raise forms.ValidationError("Enter the 12 to 19 digits of your card number.")
        if not luhn_is_valid(number):
            raise forms.ValidationError("This card number is not valid. Please check it.")
        return number

    def clean_expiry(self) -> tuple[int, int]:
        match = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", self.cleaned_data["expiry"])
        if not match or not 1 <= int(match[1]) <= 12:
            raise forms.ValidationError("Enter the expiry date as MM/YY, for example 04/29.")
        month, year = int(match[1]), int(match[2])
        year = year + 2000 if year < 100 else year
        today = date.today()
        if (year, month) < (today.year, today.month):
            raise forms.ValidationError("This card has expired.")
        if year > today.year + 20:
            raise forms.ValidationError("Enter a real expiry date.")
        return month, year

    def clean_cvc(self) -> str:
        cvc = self.cleaned_data["cvc"].strip()
        if not re.fullmatch(r"\d{3,4}", cvc):
            raise forms.ValidationError("Enter the 3 or 4 digits on the back of your card.")
        return cvc

    def clean_checkout_token(self) -> str:
        token = self.cleaned_data["checkout_token"]
        if not CHECKOUT_TOKEN_PATTERN.fullmatch(token):
            raise forms.ValidationError("This checkout form has expired. Please try again.")
        return token

    def card(self) -> Card:
        month, year = self.cleaned_data["expiry"]
        return Card(
            number=self.cleaned_data["number"], expiry_month=month, expiry_year=year, cvc=self.cleaned_data["cvc"]
        )


class SignUpForm(UserCreationForm):
    email = forms.EmailField(label="Email", help_text="For your order confirmations.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

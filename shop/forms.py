import re
from datetime import date

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core import validators

from .countries import SHIPPING_COUNTRIES
from .models import Product
from .payments import Card
from .services import ShippingAddress

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
        },
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["quantity"]
        field.min_value, field.max_value = self.min_quantity, settings.SHOP_MAX_QUANTITY_PER_LINE
        # The upper limit is checked in clean(), where the message can name the product.
        field.validators = [validators.MinValueValidator(field.min_value)]
        field.widget.attrs.update({"min": field.min_value, "max": field.max_value, "inputmode": "numeric"})

    def clean(self):
        cleaned_data = super().clean()
        quantity, limit = cleaned_data.get("quantity"), settings.SHOP_MAX_QUANTITY_PER_LINE
        if quantity is not None and quantity > limit:
            product = cleaned_data.get("product")
            of = f" of {product.name}" if product is not None else ""
            self.add_error("quantity", f"You can buy at most {limit}{of} per order.")
        return cleaned_data


class CartUpdateForm(CartLineForm):
    """Like CartLineForm, but zero is allowed: it removes the line."""

    min_quantity = 0


class CartRemoveForm(forms.Form):
    product = ProductChoiceField(queryset=Product.objects.all(), widget=forms.HiddenInput)


class UnechoedTextInput(forms.TextInput):
    """A text input that never renders its value back: card data is not put in a page."""

    def format_value(self, value):
        return None


PHONE_PATTERN = re.compile(r"^\+?[0-9 ()./-]{6,25}$")
POSTAL_CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{1,11}$")
COUNTRY_CHOICES = [("", "Choose a country"), *SHIPPING_COUNTRIES]


def _text(label: str, max_length: int, autocomplete: str, *, required: bool = True, **attrs) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=max_length,
        required=required,
        error_messages={
            "required": f"Enter your {label.lower()}.",
            "max_length": f"Keep it under {max_length} characters.",
        },
        widget=forms.TextInput(attrs={"autocomplete": autocomplete, **attrs}),
    )


class AddressForm(forms.Form):
    """A postal address, as the checkout and the address book ask for it."""

    # `section` prefixes the autocomplete tokens ("shipping street-address-line1") for browsers' autofill.
    autocomplete_section = "shipping"

    full_name = _text("Full name", 150, "name")
    line1 = _text("Address line 1", 200, "address-line1")
    line2 = _text("Address line 2", 200, "address-line2", required=False)
    city = _text("City", 100, "address-level2")
    postal_code = _text("Postal code", 20, "postal-code")
    country = forms.ChoiceField(
        label="Country",
        choices=COUNTRY_CHOICES,
        error_messages={
            "required": "Choose a country.",
            "invalid_choice": "We do not ship to that country yet. Choose one from the list.",
        },
        widget=forms.Select(attrs={"autocomplete": "country"}),
    )
    phone = _text("Phone", 30, "tel", required=False, inputmode="tel")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["line2"].help_text = "Apartment, floor, company (optional)."
        self.fields["phone"].help_text = "Optional: for the courier, if they cannot find you."
        for name in ("full_name", "line1", "line2", "city", "postal_code", "country", "phone"):
            widget = self.fields[name].widget
            widget.attrs["autocomplete"] = f"{self.autocomplete_section} {widget.attrs['autocomplete']}"

    def clean_full_name(self) -> str:
        name = " ".join(self.cleaned_data["full_name"].split())
        if len(name) < 2:
            raise forms.ValidationError("Enter the name of the person who receives the parcel.")
        return name

    def clean_postal_code(self) -> str:
        code = " ".join(self.cleaned_data["postal_code"].split()).upper()
        if not POSTAL_CODE_PATTERN.fullmatch(code):
            raise forms.ValidationError("Enter a postal code of letters and digits, for example 75001 or SW1A 1AA.")
        return code

    def clean_phone(self) -> str:
        phone = self.cleaned_data["phone"].strip()
        if phone and (not PHONE_PATTERN.fullmatch(phone) or sum(char.isdigit() for char in phone) < 6):
            raise forms.ValidationError("Enter a phone number of digits, for example +33 1 23 45 67 89.")
        return phone

    def shipping_address(self) -> ShippingAddress:
        return ShippingAddress.from_data(self.cleaned_data)


class AddressBookForm(AddressForm):
    """An entry of the address book (account page)."""

    make_default = forms.BooleanField(label="Use this address for my next orders", required=False)


class CheckoutForm(AddressForm):
    """Where the order goes, where the receipt goes, and a card checked as far as possible before the bank is asked."""

    email = forms.EmailField(
        label="Email for the receipt",
        max_length=254,
        error_messages={
            "required": "Enter the email address for your receipt.",
            "invalid": "Enter a valid email address.",
        },
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    save_address = forms.BooleanField(label="Remember this address for my next orders", required=False, initial=True)
    number = forms.CharField(
        label="Card number",
        max_length=23,
        # No placeholder: a sample number in the box looks like a card already filled in.
        widget=UnechoedTextInput(attrs={"autocomplete": "cc-number", "inputmode": "numeric"}),
    )
    expiry = forms.CharField(
        label="Expiry (MM/YY)",
        max_length=9,  # "MM / YYYY": clean_expiry accepts spaces around the slash and four-digit years.
        widget=forms.TextInput(attrs={"autocomplete": "cc-exp", "inputmode": "numeric", "placeholder": "MM/YY"}),
    )
    cvc = forms.CharField(
        label="CVC",
        max_length=4,
        widget=UnechoedTextInput(attrs={"autocomplete": "cc-csc", "inputmode": "numeric"}),
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


class AccountEmailForm(forms.Form):
    email = forms.EmailField(
        label="Email",
        max_length=254,
        help_text="Where your receipts go.",
        error_messages={"required": "Enter your email address.", "invalid": "Enter a valid email address."},
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

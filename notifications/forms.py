from django import forms

from shop.models import Product

from .models import Notification

IN_APP, BY_EMAIL = "in_app", "email"


class PreferencesForm(forms.Form):
    """One choice a notification kind: in the app only, or also by email when left unread."""

    def __init__(self, *args, minutes: float, **kwargs):
        super().__init__(*args, **kwargs)
        minutes_text = f"{minutes:g} minute" + ("" if minutes == 1 else "s")
        choices = [
            (IN_APP, "In the app only"),
            (BY_EMAIL, f"In the app, and by email if still unread after {minutes_text}"),
        ]
        for kind, label in Notification.Kind.choices:
            self.fields[kind] = forms.ChoiceField(label=label, choices=choices, widget=forms.RadioSelect)

    @classmethod
    def initial_for(cls, by_email: dict[str, bool]) -> dict[str, str]:
        return {kind: BY_EMAIL if wanted else IN_APP for kind, wanted in by_email.items()}

    def by_email(self) -> dict[str, bool]:
        return {kind: value == BY_EMAIL for kind, value in self.cleaned_data.items()}


class StockAlertForm(forms.Form):
    product = forms.ModelChoiceField(
        queryset=Product.objects.available(),
        error_messages={
            "invalid_choice": "That product is not in the catalog.",
            "required": "Choose a product.",
        },
    )

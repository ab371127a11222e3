"""The shopper's address book and account details."""

from dataclasses import asdict, dataclass, fields

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from ..models import Address, Order
from .errors import ShopError


class AddressNotFound(ShopError):
    """The address is not one of this shopper's."""


@dataclass(frozen=True)
class ShippingAddress:
    """Where an order goes, as entered at checkout or picked from the address book."""

    full_name: str
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str = ""
    phone: str = ""

    @classmethod
    def from_data(cls, data) -> "ShippingAddress":
        """Build one from a mapping with these keys (a form's cleaned_data, an Address's fields)."""
        return cls(**{field.name: (data.get(field.name) or "").strip() for field in fields(cls)})

    @classmethod
    def of(cls, address: Address) -> "ShippingAddress":
        return cls(**{field.name: getattr(address, field.name) for field in fields(cls)})

    def order_fields(self) -> dict[str, str]:
        """The Order fields that keep this address as a snapshot."""
        return {
            "shipping_name": self.full_name,
            "shipping_line1": self.line1,
            "shipping_line2": self.line2,
            "shipping_city": self.city,
            "shipping_postal_code": self.postal_code,
            "shipping_country": self.country,
            "shipping_phone": self.phone,
        }

    @classmethod
    def of_order(cls, order: Order) -> "ShippingAddress | None":
        if not order.shipping_line1:
            return None
        return cls(
            full_name=order.shipping_name,
            line1=order.shipping_line1,
            line2=order.shipping_line2,
            city=order.shipping_city,
            postal_code=order.shipping_postal_code,
            country=order.shipping_country,
            phone=order.shipping_phone,
        )


def _same_address_key(address: ShippingAddress) -> tuple:
    # Two entries that differ only in case or spacing are the same place.
    return tuple(" ".join(value.split()).casefold() for value in asdict(address).values())


def default_address(*, user) -> Address | None:
    """Return the shopper's default address (the one the next checkout starts from), if any."""
    if not user.is_authenticated:
        return None
    return Address.objects.filter(user=user, is_default=True).first()


def list_addresses(*, user) -> list[Address]:
    return list(Address.objects.filter(user=user))


def get_address(*, user, address_id: int) -> Address:
    """Return one of the shopper's addresses; another shopper's is not found, like a missing one."""
    address = Address.objects.filter(user=user, pk=address_id).first()
    if address is None:
        raise AddressNotFound("That address is not in your address book.")
    return address


def _make_default(address: Address) -> None:
    """Make `address` the shopper's default, saving it (an address not yet saved is inserted as such)."""
    # Clear the old default first: the partial unique index allows one default per shopper.
    others = Address.objects.filter(user_id=address.user_id, is_default=True)
    (others.exclude(pk=address.pk) if address.pk else others).update(is_default=False)
    if address._state.adding:
        address.is_default = True
        address.save()
    elif not address.is_default:
        address.is_default = True
        address.save(update_fields=["is_default", "updated_at"])


def _lock_address_book(user) -> None:
    # Two saves of one shopper at once (two tabs) take turns, so both cannot become default.
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).only("pk"))


def add_address(*, user, address: ShippingAddress, make_default: bool = False) -> Address:
    """Add an address to the shopper's book; the first one, or with `make_default`, becomes the default."""
    with transaction.atomic():
        _lock_address_book(user)
        saved = Address.objects.create(user=user, **asdict(address))
        if make_default or not Address.objects.filter(user=user, is_default=True).exists():
            _make_default(saved)
    return saved


def update_address(*, user, address_id: int, address: ShippingAddress) -> Address:
    """Change one of the shopper's addresses (orders placed with it keep their own copy)."""
    with transaction.atomic():
        _lock_address_book(user)
        saved = get_address(user=user, address_id=address_id)
        for name, value in asdict(address).items():
            setattr(saved, name, value)
        saved.save()
    return saved


def set_default_address(*, user, address_id: int) -> Address:
    with transaction.atomic():
        _lock_address_book(user)
        address = get_address(user=user, address_id=address_id)
        _make_default(address)
    return address


def delete_address(*, user, address_id: int) -> None:
    """Remove an address; if it was the default, the most recently used other one takes its place."""
    with transaction.atomic():
        _lock_address_book(user)
        address = get_address(user=user, address_id=address_id)
        address.delete()
        if address.is_default and (successor := Address.objects.filter(user=user).first()):
            _make_default(successor)


def remember_address(*, user, address: ShippingAddress) -> Address:
    """Keep an address a shopper just ordered to, as their default: the next checkout offers it.

    An entry already in the book (the same place, whatever the case or spacing) is reused.
    """
    key = _same_address_key(address)
    # Most returning shoppers ship to their default again: one read and its "used now" stamp
    # (the most recently used address takes over when the default is deleted), no lock.
    current = default_address(user=user)
    if current is not None and _same_address_key(ShippingAddress.of(current)) == key:
        current.updated_at = timezone.now()
        Address.objects.filter(pk=current.pk).update(updated_at=current.updated_at)
        return current
    with transaction.atomic():
        _lock_address_book(user)
        saved = next(
            (
                existing
                for existing in Address.objects.filter(user=user)
                if _same_address_key(ShippingAddress.of(existing)) == key
            ),
            None,
        )
        if saved is None:
            saved = Address(user=user, **asdict(address))
        _make_default(saved)
    return saved


def change_email(*, user, email: str):
    """Change the account's email address (where receipts go unless a checkout says otherwise)."""
    user.email = get_user_model().objects.normalize_email(email.strip())
    user.save(update_fields=["email"])
    return user

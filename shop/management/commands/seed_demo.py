from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from shop.models import Product

DEFAULT_PASSWORD = "shop-demo-2026"

DEMO_PRODUCTS = [
    ("Espresso Beans 1 kg", "19.90", "Dark roast, chocolate and hazelnut notes."),
    ("Pour-over Kettle", "49.00", "Gooseneck kettle with a built-in thermometer."),
    ("Ceramic Dripper", "24.50", "Hand-glazed cone dripper for one to two cups."),
    ("Paper Filters (100)", "5.90", "Unbleached filters that fit the ceramic dripper."),
    ("Burr Grinder", "129.00", "Conical burrs, 40 grind settings, quiet motor."),
    ("Milk Frother", "34.90", "Hot and cold foam at the press of a button."),
    ("Travel Mug", "22.00", "Double-walled steel; keeps coffee hot for six hours."),
    ("Espresso Cups (set of 4)", "27.50", "Thick porcelain that holds the heat."),
    ("Cold Brew Bottle", "29.00", "One litre, with a fine mesh filter."),
    ("Digital Scale", "39.90", "0.1 g precision with a built-in timer."),
    ("Tamper 58 mm", "31.00", "Stainless steel base, walnut handle."),
    ("Knock Box", "18.50", "Rubber bar, non-slip base."),
    ("Decaf Beans 500 g", "12.90", "Swiss water process, caramel sweetness."),
    ("Single Origin Sampler", "36.00", "Three 250 g bags from three continents."),
    ("Cleaning Tablets", "9.90", "For espresso machines; 60 tablets."),
    ("Barista Apron", "42.00", "Waxed canvas with leather straps."),
]

# Without --stock, a mix that shows every stock state in the catalog.
DEMO_STOCK_PATTERN = [25, 12, 3, 40, 0, 18, 2, 30]


class Command(BaseCommand):
    help = "Create demo products, customers customer1..N and a staff superuser `admin`. Safe to run again."

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=3, help="How many customers (default 3).")
        parser.add_argument("--products", type=int, default=len(DEMO_PRODUCTS), help="How many products.")
        parser.add_argument("--stock", type=int, default=None, help="Stock of every product (default: a mix).")
        parser.add_argument(
            "--password", default=DEFAULT_PASSWORD, help=f"Password of every account (default {DEFAULT_PASSWORD})."
        )

    def handle(self, *args, customers, products, stock, password, **options):
        if customers < 0 or products < 0 or (stock is not None and stock < 0):
            raise CommandError("--customers, --products and --stock must be zero or more.")
        if not password:
            raise CommandError("--password must not be empty.")
        with transaction.atomic():
            created_products = self._seed_products(products, stock)
            created_users = self._seed_users(customers, password)
        self.stdout.write(
            f"Demo data ready: {created_products} product(s) and {created_users} account(s) created "
            f"(existing ones left as they were)."
        )
        self.stdout.write(f"Sign in as customer1..customer{customers} or as admin (staff), password: {password}")

    def _seed_products(self, count: int, stock: int | None) -> int:
        created = 0
        for index in range(count):
            if index < len(DEMO_PRODUCTS):
                name, price, description = DEMO_PRODUCTS[index]
            else:
                name, price, description = (
                    f"Demo Product {index + 1}",
                    f"{10 + index % 40}.00",
                    "A product for load tests.",
                )
            units = stock if stock is not None else DEMO_STOCK_PATTERN[index % len(DEMO_STOCK_PATTERN)]
            _, was_created = Product.objects.get_or_create(
                slug=slugify(name),
                defaults={"name": name, "price": Decimal(price), "description": description, "stock": units},
            )
            created += was_created
        return created

    def _seed_users(self, customers: int, password: str) -> int:
        User = get_user_model()
        created = 0
        accounts = [("admin", True)] + [(f"customer{number}", False) for number in range(1, customers + 1)]
        for username, is_staff in accounts:
            user, was_created = User.objects.get_or_create(
                username=username,
                defaults={"email": f"{username}@example.com", "is_staff": is_staff, "is_superuser": is_staff},
            )
            if was_created:
                user.set_password(password)
                user.save(update_fields=["password"])
                created += 1
        return created

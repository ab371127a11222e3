from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from shop import services
from shop.demo_images import product_picture_png
from shop.models import Category, Product

DEFAULT_PASSWORD = "shop-demo-2026"

DEMO_CATEGORIES = {
    "coffee": ("Coffee", "Freshly roasted beans, whole: espresso, filter, decaf and samplers."),
    "brewing": ("Brewing", "Kettles, drippers, filters and grinders for coffee made by hand."),
    "espresso": ("Espresso", "Tampers, knock boxes, cups and care for the espresso corner."),
    "accessories": ("Accessories", "Mugs, scales, aprons and everything around the cup."),
}

DEMO_PRODUCTS = [
    ("Espresso Beans 1 kg", "19.90", "Dark roast, chocolate and hazelnut notes.", "coffee"),
    ("Pour-over Kettle", "49.00", "Gooseneck kettle with a built-in thermometer.", "brewing"),
    ("Ceramic Dripper", "24.50", "Hand-glazed cone dripper for one to two cups.", "brewing"),
    ("Paper Filters (100)", "5.90", "Unbleached filters that fit the ceramic dripper.", "brewing"),
    ("Burr Grinder", "129.00", "Conical burrs, 40 grind settings, quiet motor.", "brewing"),
    ("Milk Frother", "34.90", "Hot and cold foam at the press of a button.", "espresso"),
    ("Travel Mug", "22.00", "Double-walled steel; keeps coffee hot for six hours.", "accessories"),
    ("Espresso Cups (set of 4)", "27.50", "Thick porcelain that holds the heat.", "espresso"),
    ("Cold Brew Bottle", "29.00", "One litre, with a fine mesh filter.", "brewing"),
    ("Digital Scale", "39.90", "0.1 g precision with a built-in timer.", "accessories"),
    ("Tamper 58 mm", "31.00", "Stainless steel base, walnut handle.", "espresso"),
    ("Knock Box", "18.50", "Rubber bar, non-slip base.", "espresso"),
    ("Decaf Beans 500 g", "12.90", "Swiss water process, caramel sweetness.", "coffee"),
    ("Single Origin Sampler", "36.00", "Three 250 g bags from three continents.", "coffee"),
    ("Cleaning Tablets", "9.90", "For espresso machines; 60 tablets.", "espresso"),
    ("Barista Apron", "42.00", "Waxed canvas with leather straps.", "accessories"),
]

# Without --stock, a mix that shows every stock state in the catalog.
DEMO_STOCK_PATTERN = [25, 12, 3, 40, 0, 18, 2, 30]


class Command(BaseCommand):
    help = (
        "Create demo categories and products (with pictures), customers customer1..N and a staff superuser "
        "`admin`. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=3, help="How many customers (default 3).")
        parser.add_argument("--products", type=int, default=len(DEMO_PRODUCTS), help="How many products.")
        parser.add_argument("--stock", type=int, default=None, help="Stock of every product (default: a mix).")
        parser.add_argument(
            "--password", default=DEFAULT_PASSWORD, help=f"Password of every account (default {DEFAULT_PASSWORD})."
        )
        parser.add_argument(
            "--no-images", action="store_true", help="Do not draw product pictures (faster, for load tests)."
        )

    def handle(self, *args, customers, products, stock, password, no_images=False, **options):
        if customers < 0 or products < 0 or (stock is not None and stock < 0):
            raise CommandError("--customers, --products and --stock must be zero or more.")
        if not password:
            raise CommandError("--password must not be empty.")
        with transaction.atomic():
            created_products = self._seed_products(products, stock)
            created_users = self._seed_users(customers, password)
        pictures = 0 if no_images else self._seed_pictures(products)
        if pictures:
            self.stdout.write(f"Drew {pictures} product picture(s).")
        self.stdout.write(
            f"Demo data ready: {created_products} product(s) and {created_users} account(s) created "
            f"(existing ones left as they were)."
        )
        self.stdout.write(f"Sign in as customer1..customer{customers} or as admin (staff), password: {password}")

    def _seed_categories(self) -> dict[str, Category]:
        return {
            key: Category.objects.get_or_create(slug=key, defaults={"name": name, "description": description})[0]
            for key, (name, description) in DEMO_CATEGORIES.items()
        }

    def _seed_products(self, count: int, stock: int | None) -> int:
        categories = self._seed_categories()
        created = 0
        for index in range(count):
            if index < len(DEMO_PRODUCTS):
                name, price, description, category_key = DEMO_PRODUCTS[index]
            else:
                name, price, description, category_key = (
                    f"Demo Product {index + 1}",
                    f"{10 + index % 40}.00",
                    "A product for load tests.",
                    None,
                )
            category = categories.get(category_key)
            units = stock if stock is not None else DEMO_STOCK_PATTERN[index % len(DEMO_STOCK_PATTERN)]
            product, was_created = Product.objects.get_or_create(
                slug=slugify(name),
                defaults={
                    "name": name,
                    "price": Decimal(price),
                    "description": description,
                    "stock": units,
                    "category": category,
                },
            )
            if not was_created and product.category_id is None and category is not None:
                # A demo product from before categories existed gets its shelf; nothing else changes.
                product.category = category
                product.save(update_fields=["category"])
            created += was_created
        return created

    def _seed_pictures(self, count: int) -> int:
        """Draw a picture for each demo product that has none (or whose file is gone); return how many."""
        drawn = 0
        for name, *_ in DEMO_PRODUCTS[:count]:
            product = Product.objects.filter(slug=slugify(name)).first()
            if product is None or (product.image and product.image.storage.exists(product.image.name)):
                continue
            picture = ContentFile(product_picture_png(product.name), name=f"{product.slug}.png")
            services.set_product_image(product=product, image=picture, alt=f"Illustration of {product.name}")
            drawn += 1
        return drawn

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

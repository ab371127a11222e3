"""Browsing the catalog: categories, sorting, search, and the product photos' renditions."""

import io
import logging
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.core.files.base import ContentFile, File
from django.db import connection
from django.db.models import Count, Q, QuerySet
from PIL import Image, ImageOps, UnidentifiedImageError

from ..models import Category, Product
from .errors import ShopError

logger = logging.getLogger(__name__)


class InvalidImage(ShopError):
    """The uploaded file is not a picture we can read."""


@dataclass(frozen=True)
class Sort:
    key: str
    label: str
    ordering: tuple[str, ...]


SORTS: dict[str, Sort] = {
    sort.key: sort
    for sort in [
        Sort("name", "Name, A to Z", ("name", "pk")),
        Sort("price", "Price, low to high", ("price", "name", "pk")),
        Sort("-price", "Price, high to low", ("-price", "name", "pk")),
    ]
}
DEFAULT_SORT = "name"

# A query longer than this is cut: nobody types more, and a long one only costs the database.
MAX_QUERY_LENGTH = 100
MAX_QUERY_TERMS = 8
SEARCH_CONFIG = "english"  # Stemming: "grinders" finds "Burr Grinder".


def sort_for(key: str | None) -> Sort:
    """Return the sort named `key`, or the default one for anything else (a hand-edited URL)."""
    return SORTS.get(key or "", SORTS[DEFAULT_SORT])


def list_categories() -> list[Category]:
    """Categories that have something to show, with the number of active products in each."""
    return list(
        Category.objects.annotate(product_count=Count("products", filter=Q(products__is_active=True))).filter(
            product_count__gt=0
        )
    )


def catalog_products(*, category: Category | None = None, sort: str | None = None) -> QuerySet[Product]:
    """The products a shopper may browse, in one category or all, in the chosen order."""
    products = Product.objects.available().select_related("category")
    if category is not None:
        products = products.filter(category=category)
    return products.order_by(*sort_for(sort).ordering)


def normalize_query(query: str | None) -> str:
    return " ".join((query or "").split())[:MAX_QUERY_LENGTH]


def search_products(*, query: str) -> QuerySet[Product]:
    """Find active products whose name or description matches `query`, best matches first.

    On PostgreSQL: full-text search (stemmed, name weighted above description, websearch
    syntax: "quoted phrases", -excluded words), plus a plain match on the name and the
    description, so that part of a word ("espres", "grind") still finds something. Elsewhere every word must appear in
    the name or the description (case-insensitive).
    """
    query = normalize_query(query)
    products = Product.objects.available().select_related("category")
    if not query:
        return products.none()
    if connection.vendor == "postgresql":
        vector = SearchVector("name", weight="A", config=SEARCH_CONFIG) + SearchVector(
            "description", weight="B", config=SEARCH_CONFIG
        )
        search = SearchQuery(query, search_type="websearch", config=SEARCH_CONFIG)
        return (
            products.annotate(document=vector, rank=SearchRank(vector, search))
            .filter(Q(document=search) | Q(name__icontains=query) | Q(description__icontains=query))
            .order_by("-rank", "name", "pk")
        )
    condition = Q()
    for term in query.split()[:MAX_QUERY_TERMS]:
        condition &= Q(name__icontains=term) | Q(description__icontains=term)
    return products.filter(condition).order_by("name", "pk")


# Product photos -------------------------------------------------------------------------

# A tile is cropped to the catalog card's 4:3 box; the product page shows the whole photo,
# fitted in a square. Both are twice the size they are shown at, for sharp high-density screens.
TILE_SIZE = (480, 360)
LARGE_BOX = (840, 840)
RENDITION_FORMAT, RENDITION_EXTENSION, RENDITION_QUALITY = "WEBP", "webp", 82


def _encode(image: Image.Image) -> ContentFile:
    buffer = io.BytesIO()
    image.save(buffer, format=RENDITION_FORMAT, quality=RENDITION_QUALITY, method=4)
    return ContentFile(buffer.getvalue())


def _open_photo(file) -> Image.Image:
    try:
        file.seek(0)
        image = Image.open(file)
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise InvalidImage("This file is not a picture we can read (JPEG, PNG or WebP).") from error
    image = ImageOps.exif_transpose(image)  # Phones store the rotation in EXIF, not in the pixels.
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent parts go white, as on the page behind them.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _save_as(field_file, name: str, content: File) -> None:
    """Store `content` under exactly `name` (in the field's folder), replacing what was there.

    File names come from the product's slug, which is unique, so a file already at that name
    is this product's own (left by an earlier run): replaced, not kept beside a renamed copy.
    """
    target = field_file.field.generate_filename(field_file.instance, name)
    if field_file.storage.exists(target):
        field_file.storage.delete(target)
    field_file.save(name, content, save=False)


def make_product_renditions(*, product: Product) -> Product:
    """(Re)make the tile and product-page renditions of a product's photo, or clear them if it has none."""
    for rendition in (product.image_tile, product.image_large):
        if rendition:
            rendition.delete(save=False)
    product.image_large_width = product.image_large_height = None
    if product.image:
        with product.image.open("rb") as file:
            photo = _open_photo(file)
        tile = ImageOps.fit(photo, TILE_SIZE, Image.Resampling.LANCZOS)
        large = photo.copy()
        large.thumbnail(LARGE_BOX, Image.Resampling.LANCZOS)
        _save_as(product.image_tile, f"{product.slug}-tile.{RENDITION_EXTENSION}", _encode(tile))
        _save_as(product.image_large, f"{product.slug}.{RENDITION_EXTENSION}", _encode(large))
        product.image_large_width, product.image_large_height = large.size
    product.save(update_fields=["image_tile", "image_large", "image_large_width", "image_large_height"])
    return product


def set_product_image(*, product: Product, image: File, alt: str | None = None) -> Product:
    """Give a product a photo (any size Pillow reads) and make its renditions."""
    _open_photo(image)  # Refuse a file that is not a picture before anything is stored.
    if product.image:
        product.image.delete(save=False)
    image.seek(0)
    name = getattr(image, "name", "") or ""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else "jpg"
    _save_as(product.image, f"{product.slug}.{extension}", image)
    fields = ["image"]
    if alt is not None:
        product.image_alt = alt
        fields.append("image_alt")
    product.save(update_fields=fields)
    return make_product_renditions(product=product)

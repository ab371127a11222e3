"""Browsing (issue 9): categories, sorting, search, product photos, the sold-out state, and page metadata."""

import io
import re

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from PIL import Image

from shop import services
from shop.models import Category, Product

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


def names_on(page: str) -> list[str]:
    return re.findall(r'<h2 class="product-name"><a href="[^"]+">([^<]+)</a></h2>', page)


def picture(size=(1200, 900), color=(200, 120, 60), fmt="PNG", mode="RGB") -> ContentFile:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return ContentFile(buffer.getvalue(), name=f"photo.{fmt.lower()}")


@pytest.fixture
def shelves(make_product):
    brewing = Category.objects.create(name="Brewing", slug="brewing", description="Kettles and drippers.")
    coffee = Category.objects.create(name="Coffee", slug="coffee", description="Beans.")
    Category.objects.create(name="Empty", slug="empty")
    products = {
        "kettle": make_product(name="Pour-over Kettle", price="49.00"),
        "dripper": make_product(name="Ceramic Dripper", price="24.50"),
        "beans": make_product(name="Espresso Beans", price="19.90"),
        "grinder": make_product(name="Burr Grinder", price="129.00"),
    }
    for key, category in (("kettle", brewing), ("dripper", brewing), ("beans", coffee)):
        products[key].category = category
        products[key].save(update_fields=["category"])
    Product.objects.filter(pk=products["beans"].pk).update(description="Dark roast with chocolate notes.")
    return {"brewing": brewing, "coffee": coffee, **products}


# Categories and sorting -------------------------------------------------------------------------


def test_the_catalog_lists_categories_with_products_and_filters_by_one(client, shelves):
    page = text(client.get("/"))
    assert 'href="/categories/brewing/"' in page and 'href="/categories/coffee/"' in page
    assert "/categories/empty/" not in page  # Nothing to show there.

    filtered = text(client.get("/?category=brewing"))
    assert names_on(filtered) == ["Ceramic Dripper", "Pour-over Kettle"]


def test_a_category_page_shows_its_products_name_and_description(client, shelves):
    response = client.get("/categories/brewing/")
    assert response.status_code == 200
    page = text(response)
    assert names_on(page) == ["Ceramic Dripper", "Pour-over Kettle"]
    assert "<h1>Brewing</h1>" in page
    assert '<meta name="description" content="Kettles and drippers.">' in page
    assert 'href="/categories/brewing/" aria-current="page"' in page


@pytest.mark.parametrize("url", ["/categories/nothing-here/", "/?category=nothing-here"])
def test_an_unknown_category_is_404(client, shelves, url):
    assert client.get(url).status_code == 404


def test_an_empty_category_says_so(client, shelves):
    page = text(client.get("/categories/empty/"))
    assert "Nothing in Empty right now." in page


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("name", ["Burr Grinder", "Ceramic Dripper", "Espresso Beans", "Pour-over Kettle"]),
        ("price", ["Espresso Beans", "Ceramic Dripper", "Pour-over Kettle", "Burr Grinder"]),
        ("-price", ["Burr Grinder", "Pour-over Kettle", "Ceramic Dripper", "Espresso Beans"]),
        ("nonsense", ["Burr Grinder", "Ceramic Dripper", "Espresso Beans", "Pour-over Kettle"]),
    ],
)
def test_the_catalog_sorts_by_name_or_price(client, shelves, sort, expected):
    response = client.get(f"/?sort={sort}")
    assert response.status_code == 200
    assert names_on(text(response)) == expected


def test_sorting_a_category_keeps_the_category(client, shelves):
    page = text(client.get("/categories/brewing/?sort=-price"))
    assert names_on(page) == ["Pour-over Kettle", "Ceramic Dripper"]
    assert '<option value="-price" selected>' in page


def test_page_links_keep_the_filter_and_the_sort(client, make_product):
    coffee = Category.objects.create(name="Coffee", slug="coffee")
    for number in range(14):
        product = make_product(name=f"Beans {number:02d}", price=f"{10 + number}.00")
        product.category = coffee
        product.save(update_fields=["category"])
    page = text(client.get("/?category=coffee&sort=-price"))
    assert 'href="?category=coffee&amp;sort=-price&amp;page=2"' in page
    second = text(client.get("/?category=coffee&sort=-price&page=2"))
    assert names_on(second) == ["Beans 01", "Beans 00"]


# Search ------------------------------------------------------------------------------------------


def test_search_finds_products_by_name_or_description(client, shelves):
    assert names_on(text(client.get("/search/?q=kettle"))) == ["Pour-over Kettle"]
    assert names_on(text(client.get("/search/?q=chocolate"))) == ["Espresso Beans"]


def test_search_needs_every_word(client, shelves):
    assert names_on(text(client.get("/search/?q=dark+roast"))) == ["Espresso Beans"]
    assert names_on(text(client.get("/search/?q=dark+kettle"))) == []


def test_search_leaves_out_inactive_products(client, make_product):
    make_product(name="Retired Kettle", is_active=False)
    assert names_on(text(client.get("/search/?q=kettle"))) == []


def test_an_empty_search_asks_for_words(client, shelves):
    for url in ("/search/", "/search/?q=", "/search/?q=%20%20"):
        response = client.get(url)
        assert response.status_code == 200
        page = text(response)
        assert "data-search-empty" in page and "Type a word or two" in page
        assert names_on(page) == []


def test_a_search_without_results_says_so_and_offers_categories(client, shelves):
    page = text(client.get("/search/?q=teapot"))
    assert "No products match “teapot”." in page
    assert 'href="/categories/coffee/"' in page


@pytest.mark.parametrize(
    "query",
    ["%", "_", "'; drop table shop_product; --", "a" * 5000, "<script>alert(1)</script>", "ü ß 東京", '"unclosed'],
)
def test_odd_searches_answer_calmly(client, shelves, query):
    response = client.get("/search/", {"q": query})
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in text(response)


def test_the_header_search_box_is_on_every_page_and_keeps_the_words(client, shelves):
    page = text(client.get("/search/?q=kettle"))
    assert re.search(r'<form class="site-search" role="search" method="get" action="/search/">', page)
    assert 'name="q" value="kettle"' in page
    assert 'class="site-search"' in text(client.get("/cart/"))


@pytest.mark.postgres
def test_postgres_search_understands_word_forms_and_ranks_names_first(client, make_product):
    make_product(name="Burr Grinder")
    beans = make_product(name="Espresso Beans")
    Product.objects.filter(pk=beans.pk).update(description="Best with a good grinder.")

    assert names_on(text(client.get("/search/?q=grinders"))) == ["Burr Grinder", "Espresso Beans"]
    assert names_on(text(client.get("/search/?q=grind"))) == ["Burr Grinder", "Espresso Beans"]
    assert names_on(text(client.get("/search/?q=grinder+-espresso"))) == ["Burr Grinder"]


# Product photos ------------------------------------------------------------------------------------


def test_a_photo_gets_a_tile_and_a_product_page_rendition(make_product):
    product = make_product(name="Kettle")

    services.set_product_image(product=product, image=picture((1600, 900)), alt="A steel kettle")

    product.refresh_from_db()
    with Image.open(product.image_tile.path) as tile:
        assert tile.size == services.catalog.TILE_SIZE and tile.format == "WEBP"
    with Image.open(product.image_large.path) as large:
        assert large.size == (840, 473)  # The whole photo, fitted in 840 x 840.
    assert (product.image_large_width, product.image_large_height) == (840, 473)
    assert product.image_alt_text == "A steel kettle"


def test_a_transparent_photo_gets_a_white_background(make_product):
    product = make_product(name="Kettle")
    services.set_product_image(product=product, image=picture(color=(0, 0, 0, 0), mode="RGBA"))
    product.refresh_from_db()
    with Image.open(product.image_tile.path) as tile:
        assert tile.convert("RGB").getpixel((10, 10)) == (255, 255, 255)


def test_a_new_photo_replaces_the_old_files(make_product, isolated_media_root):
    product = make_product(name="Kettle")
    services.set_product_image(product=product, image=picture(color=(255, 0, 0)))
    services.set_product_image(product=product, image=picture(color=(0, 0, 255)))
    files = sorted(path.name for path in isolated_media_root.rglob("*") if path.is_file())
    assert files == sorted([f"{product.slug}.png", f"{product.slug}-tile.webp", f"{product.slug}.webp"])


def test_a_file_that_is_not_a_picture_is_refused(make_product, isolated_media_root):
    product = make_product(name="Kettle")
    with pytest.raises(services.InvalidImage, match="not a picture"):
        services.set_product_image(product=product, image=ContentFile(b"%PDF-1.4 not an image", name="photo.jpg"))
    product.refresh_from_db()
    assert not product.image
    assert not any(path.is_file() for path in isolated_media_root.rglob("*"))


def test_tiles_and_the_product_page_show_the_photo_with_size_alt_and_lazy_loading(client, make_product):
    product = make_product(name="Kettle")
    services.set_product_image(product=product, image=picture(), alt="A steel kettle")
    product.refresh_from_db()

    tile = re.search(r'<img class="product-photo"[^>]*>', text(client.get("/")))[0]
    assert f'src="/media/{product.image_tile.name}"' in tile
    assert 'width="480" height="360"' in tile and 'alt="A steel kettle"' in tile and 'loading="lazy"' in tile

    large = re.search(
        r'<img class="product-photo product-photo-large"[^>]*>', text(client.get(f"/products/{product.slug}/"))
    )[0]
    assert f'src="/media/{product.image_large.name}"' in large
    assert 'width="840" height="630"' in large and 'alt="A steel kettle"' in large


def test_a_product_without_a_photo_keeps_its_letter_tile(client, make_product):
    make_product(name="Pour-over Kettle")
    page = text(client.get("/"))
    assert re.search(r'<div class="tile tile-hue-\d" aria-hidden="true">PK</div>', page)
    assert '<img class="product-photo' not in page


def test_seed_demo_makes_categories_and_pictures_once(isolated_media_root):
    call_command("seed_demo", customers=0, products=4, stdout=io.StringIO())
    assert Category.objects.count() == 4
    products = list(Product.objects.order_by("name"))
    assert all(product.category is not None and product.image_tile for product in products)
    files_before = {path: path.stat().st_mtime_ns for path in isolated_media_root.rglob("*") if path.is_file()}
    assert len(files_before) == 12  # An original and two renditions each.

    call_command("seed_demo", customers=0, products=4, stdout=io.StringIO())

    assert {path: path.stat().st_mtime_ns for path in isolated_media_root.rglob("*") if path.is_file()} == files_before


def test_seed_demo_draws_again_a_picture_whose_file_is_gone(isolated_media_root):
    call_command("seed_demo", customers=0, products=1, stdout=io.StringIO())
    product = Product.objects.get()
    (isolated_media_root / product.image.name).unlink()

    call_command("seed_demo", customers=0, products=1, stdout=io.StringIO())

    product.refresh_from_db()
    assert (isolated_media_root / product.image.name).exists()


def test_seed_demo_can_skip_pictures(isolated_media_root):
    call_command("seed_demo", customers=0, products=2, no_images=True, stdout=io.StringIO())
    assert not any(product.image for product in Product.objects.all())


# Sold out ------------------------------------------------------------------------------------------


def test_a_sold_out_product_has_no_quantity_box_but_a_clear_state(client, make_product):
    product = make_product(name="Kettle", stock=0)
    page = text(client.get(f"/products/{product.slug}/"))
    assert 'name="quantity"' not in page and "Add to cart" not in page
    assert re.search(r'<div class="sold-out card" data-sold-out>\s*<p class="sold-out-title">Sold out</p>', page)


def test_the_product_page_says_how_many_are_already_in_the_cart(client, make_product):
    product = make_product(name="Kettle", stock=3)
    client.post("/cart/add/", {"product": product.pk, "quantity": 2})
    page = text(client.get(f"/products/{product.slug}/"))
    assert "only 3 left" in page and "2 in your cart" in page


def test_adding_past_the_stock_says_how_many_are_already_in_the_cart(client, make_product):
    product = make_product(name="Kettle", stock=3)
    client.post("/cart/add/", {"product": product.pk, "quantity": 2})
    response = client.post("/cart/add/", {"product": product.pk, "quantity": 2})
    assert response.status_code == 409
    assert "Only 3 left of Kettle. 2 are already in your cart, so you can add 1 more." in text(response)


def test_adding_past_the_limit_names_the_product_and_the_cart(client, make_product, settings):
    settings.SHOP_MAX_QUANTITY_PER_LINE = 5
    product = make_product(name="Kettle", stock=50)
    client.post("/cart/add/", {"product": product.pk, "quantity": 4})
    response = client.post("/cart/add/", {"product": product.pk, "quantity": 3})
    assert response.status_code == 409
    assert "You can buy at most 5 of Kettle per order. 4 are already in your cart, so you can add 1 more." in text(
        response
    )


# Page metadata, robots.txt, the admin's name -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "description"),
    [
        ("/", "Coffee beans and brewing gear"),
        ("/search/?q=kettle", "Search the Storefront catalog"),
        ("/cart/", "The products in your Storefront cart"),
    ],
)
def test_each_page_has_its_own_meta_description(client, shelves, url, description):
    descriptions = re.findall(r'<meta name="description" content="([^"]*)">', text(client.get(url)))
    assert len(descriptions) == 1 and descriptions[0].startswith(description)


def test_a_product_page_describes_the_product(client, shelves):
    beans = shelves["beans"]
    page = text(client.get(f"/products/{beans.slug}/"))
    assert '<meta name="description" content="Espresso Beans, €19.90. Dark roast with chocolate notes.">' in page


def test_robots_txt_keeps_crawlers_out_of_shopper_pages(client, db):
    response = client.get("/robots.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    body = text(response)
    assert body.startswith("User-agent: *\n")
    for path in ("/admin/", "/cart/", "/checkout/", "/orders/", "/account/"):
        assert f"Disallow: {path}\n" in body
    assert "Disallow: /\n" not in body  # The catalog stays open.


def test_the_admin_carries_the_shops_name(client, staff):
    client.force_login(staff)
    page = text(client.get("/admin/"))
    assert "Storefront administration" in page and "Django administration" not in page


def test_staff_manage_categories_and_see_photos_in_the_admin(client, staff, shelves):
    client.force_login(staff)
    assert "Brewing" in text(client.get("/admin/shop/category/"))
    response = client.post(
        "/admin/shop/category/add/", {"name": "Tea", "slug": "tea", "description": "Leaves."}, follow=True
    )
    assert response.status_code == 200 and Category.objects.filter(slug="tea").exists()
    kettle = shelves["kettle"]
    services.set_product_image(product=kettle, image=picture())
    kettle.refresh_from_db()
    assert kettle.image_tile.url in text(client.get("/admin/shop/product/"))


def test_uploading_a_photo_in_the_admin_makes_its_renditions(client, staff, shelves):
    client.force_login(staff)
    kettle = shelves["kettle"]
    url = f"/admin/shop/product/{kettle.pk}/change/"
    response = client.post(
        url,
        {
            "name": kettle.name,
            "slug": kettle.slug,
            "category": kettle.category_id,
            "description": "",
            "price": "49.00",
            "is_active": "on",
            "image": picture(),
            "image_alt": "A kettle on a table",
            "stock_movements-TOTAL_FORMS": "0",
            "stock_movements-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, text(response)[:2000]
    kettle.refresh_from_db()
    assert kettle.image and kettle.image_tile and kettle.image_large_width == 840
    assert kettle.image_alt == "A kettle on a table"


# Money ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [("12.5", "EUR", "€12.50"), ("1234.5", "EUR", "€1,234.50"), ("0", "USD", "$0.00"), ("9.99", "CHF", "9.99 CHF")],
)
def test_money_is_written_one_way(amount, currency, written):
    from decimal import Decimal

    from shop.money import format_money

    assert format_money(Decimal(amount), currency) == written


def test_prices_on_pages_use_the_money_format(client, make_product):
    make_product(name="Grinder", price="1290.00")
    assert "€1,290.00" in text(client.get("/"))

"""The seed_demo command: demo data for a first look and for the load tests, safe to run again."""

import io

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from shop.models import Product

PASSWORD = "pw-12345-x"


def seed(**options):
    call_command("seed_demo", customers=2, products=5, stock=7, password=PASSWORD, stdout=io.StringIO(), **options)


@pytest.mark.django_db
def test_seed_creates_products_customers_and_an_admin():
    seed()

    assert Product.objects.count() == 5
    assert set(Product.objects.values_list("stock", flat=True)) == {7}
    assert all(product.is_active and product.price > 0 for product in Product.objects.all())
    User = get_user_model()
    assert sorted(User.objects.values_list("username", flat=True)) == ["admin", "customer1", "customer2"]
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    for username in ("customer1", "customer2"):
        customer = User.objects.get(username=username)
        assert not customer.is_staff and not customer.is_superuser
        assert customer.email == f"{username}@example.com"
    assert authenticate(username="admin", password=PASSWORD) == admin
    assert authenticate(username="customer2", password=PASSWORD) is not None


@pytest.mark.django_db
def test_seeded_admin_can_log_in_to_the_admin(client):
    seed()
    assert client.login(username="admin", password=PASSWORD)
    assert client.get("/admin/shop/order/").status_code == 200


@pytest.mark.django_db
def test_running_seed_again_changes_nothing():
    seed()
    Product.objects.filter(slug=Product.objects.first().slug).update(stock=2)
    User = get_user_model()
    User.objects.filter(username="customer1").update(email="changed@example.com")
    products_before = list(Product.objects.order_by("pk").values_list("pk", "slug", "stock", "price"))
    users_before = list(User.objects.order_by("pk").values_list("pk", "username", "email", "password"))

    seed()

    assert list(Product.objects.order_by("pk").values_list("pk", "slug", "stock", "price")) == products_before
    assert list(User.objects.order_by("pk").values_list("pk", "username", "email", "password")) == users_before
    assert 2 in [stock for _, _, stock, _ in products_before]


@pytest.mark.django_db
def test_seed_says_what_it_created(capsys):
    call_command("seed_demo", customers=1, products=2, stock=3, password=PASSWORD)
    call_command("seed_demo", customers=1, products=2, stock=3, password=PASSWORD)
    output = capsys.readouterr().out
    assert "2 product(s) and 2 account(s) created" in output
    assert "0 product(s) and 0 account(s) created" in output


@pytest.mark.django_db
def test_seed_without_stock_shows_every_stock_state():
    call_command("seed_demo", customers=0, products=8, password=PASSWORD, stdout=io.StringIO())
    labels = {product.stock_label.split()[0] for product in Product.objects.all()}
    assert labels == {"in", "only", "sold"}


@pytest.mark.django_db
def test_seed_beyond_the_demo_list_makes_numbered_products():
    call_command("seed_demo", customers=0, products=20, stock=1, password=PASSWORD, stdout=io.StringIO())
    assert Product.objects.count() == 20
    assert Product.objects.filter(name="Demo Product 20").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("options", [{"customers": -1}, {"products": -1}, {"stock": -1}, {"password": ""}])
def test_seed_refuses_bad_options(options):
    arguments = {"customers": 1, "products": 1, "stock": 1, "password": PASSWORD, **options}
    with pytest.raises(CommandError):
        call_command("seed_demo", **arguments)
    assert not Product.objects.exists()

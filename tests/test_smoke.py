import pytest


@pytest.mark.django_db
def test_catalog_renders_for_anonymous_visitor(client, make_product):
    make_product(name="Kettle")
    response = client.get("/")
    assert response.status_code == 200

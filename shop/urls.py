from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from . import views
from .converters import OrderNumberConverter

# An order number is letters and digits: anything else ("%00", which PostgreSQL refuses in
# a query) is a 404 before any query runs.
register_converter(OrderNumberConverter, "order_number")

storefront_patterns = [
    path("", views.CatalogView.as_view(), name="catalog"),
    path("products/<slug:slug>/", views.ProductDetailView.as_view(), name="product"),
    path("cart/", views.cart_detail, name="cart"),
    path("cart/add/", views.cart_add, name="cart_add"),
    path("cart/update/", views.cart_update, name="cart_update"),
    path("cart/remove/", views.cart_remove, name="cart_remove"),
    path("checkout/", views.checkout, name="checkout"),
    path("orders/", views.OrderListView.as_view(), name="orders"),
    path("orders/<order_number:number>/", views.OrderDetailView.as_view(), name="order"),
]

urlpatterns = [
    path("", include((storefront_patterns, "shop"))),
    path("accounts/signup/", views.SignUpView.as_view(), name="signup"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("notifications/", include("notifications.urls")),
    path("admin/", admin.site.urls),
]

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from . import health, views
from .converters import OrderNumberConverter

# An order number is letters and digits: anything else ("%00", which PostgreSQL refuses in
# a query) is a 404 before any query runs.
register_converter(OrderNumberConverter, "order_number")

storefront_patterns = [
    path("", views.CatalogView.as_view(), name="catalog"),
    path("categories/<slug:slug>/", views.CatalogView.as_view(), name="category"),
    path("search/", views.SearchView.as_view(), name="search"),
    path("products/<slug:slug>/", views.ProductDetailView.as_view(), name="product"),
    path("cart/", views.cart_detail, name="cart"),
    path("cart/add/", views.cart_add, name="cart_add"),
    path("cart/update/", views.cart_update, name="cart_update"),
    path("cart/remove/", views.cart_remove, name="cart_remove"),
    path("checkout/", views.checkout, name="checkout"),
    path("orders/", views.OrderListView.as_view(), name="orders"),
    path("orders/<order_number:number>/", views.OrderDetailView.as_view(), name="order"),
    path("orders/<order_number:number>/cancel/", views.order_cancel, name="order_cancel"),
    path("account/", views.account, name="account"),
    path("account/password/", views.AccountPasswordView.as_view(), name="account_password"),
    path("account/addresses/new/", views.address_add, name="address_add"),
    path("account/addresses/<int:pk>/", views.address_edit, name="address_edit"),
    path("account/addresses/<int:pk>/default/", views.address_make_default, name="address_default"),
    path("account/addresses/<int:pk>/delete/", views.address_delete, name="address_delete"),
    path("robots.txt", views.robots_txt, name="robots"),
]

urlpatterns = [
    path("", include((storefront_patterns, "shop"))),
    path("accounts/signup/", views.SignUpView.as_view(), name="signup"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    # GET asks for confirmation (a link or a typed URL must not log anyone out); POST logs out.
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    # Password reset by email, with Django's own views; the templates are in templates/registration/.
    path("accounts/password-reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path("accounts/password-reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("notifications/", include("notifications.urls")),
    path("admin/", admin.site.urls),
    # Probes for the proxy and the orchestrator (see shop/health.py): no slash, nothing to redirect.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
]

# Product photos: served by Django in development only (static() adds nothing unless DEBUG);
# in production the proxy serves MEDIA_ROOT (README: Product images).
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)

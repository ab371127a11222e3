import logging
import secrets

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.contrib.auth.views import redirect_to_login
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST
from django.views.generic import DetailView, FormView, ListView

from . import services
from .forms import (
    AccountEmailForm,
    AddressBookForm,
    CartLineForm,
    CartRemoveForm,
    CartUpdateForm,
    CheckoutForm,
    SignUpForm,
)
from .models import Category, Order, Product
from .money import format_money
from .payments import PaymentError
from .receivers import SESSION_CART_KEY
from .redirects import local_redirect_target

logger = logging.getLogger(__name__)

CHECKOUT_TOKEN_SESSION_KEY = "checkout_token"
CHECKOUT_FINGERPRINT_SESSION_KEY = "checkout_cart"


def _query_without_page(request: HttpRequest) -> str:
    """The current query string minus `page`, for pagination links that keep the filters."""
    return urlencode([(key, value) for key, value in request.GET.items() if key != "page"])


class CatalogView(ListView):
    """All products, or one category's (`?category=<slug>`, or /categories/<slug>/), sorted by `?sort=`."""

    template_name = "shop/catalog.html"
    context_object_name = "products"
    paginate_by = 12
    category: Category | None = None

    def get(self, request, *args, **kwargs):
        slug = kwargs.get("slug") or request.GET.get("category")
        self.category = get_object_or_404(Category, slug=slug) if slug else None
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return services.catalog_products(category=self.category, sort=self.request.GET.get("sort"))

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            category=self.category,
            categories=services.list_categories(),
            sort=services.sort_for(self.request.GET.get("sort")),
            sorts=services.SORTS.values(),
            page_query=_query_without_page(self.request),
            **kwargs,
        )


class SearchView(ListView):
    """Products matching `?q=`, best first; an empty query shows the search form alone."""

    template_name = "shop/search.html"
    context_object_name = "products"
    paginate_by = 12

    def get_queryset(self):
        self.query = services.normalize_query(self.request.GET.get("q"))
        return services.search_products(query=self.query)

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            query=self.query,
            categories=services.list_categories(),
            page_query=_query_without_page(self.request),
            **kwargs,
        )


class ProductDetailView(DetailView):
    queryset = Product.objects.available().select_related("category")
    template_name = "shop/product_detail.html"
    context_object_name = "product"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("form", CartLineForm(initial={"product": self.object.pk, "quantity": 1}))
        context["in_cart"] = services.quantity_in_cart(cart=_shopper_cart(self.request), product=self.object)
        return context


ROBOTS_DISALLOWED = [
    "/admin/",
    "/cart/",
    "/checkout/",
    "/orders/",
    "/account/",
    "/accounts/",
    "/notifications/",
    "/search/",
]


@require_GET
def robots_txt(request: HttpRequest) -> HttpResponse:
    """Let search engines read the catalog, not the pages that are one shopper's own."""
    lines = ["User-agent: *", *(f"Disallow: {path}" for path in ROBOTS_DISALLOWED), ""]
    return HttpResponse("\n".join(lines), content_type="text/plain; charset=utf-8")


# Cart -------------------------------------------------------------------------------


def _shopper_cart(request: HttpRequest, *, create: bool = False):
    cart = services.get_cart(user=request.user, cart_id=request.session.get(SESSION_CART_KEY), create=create)
    if cart is not None and not request.user.is_authenticated:
        request.session[SESSION_CART_KEY] = cart.pk
    return cart


def _redirect_back(request: HttpRequest, fallback: str) -> HttpResponse:
    return HttpResponseRedirect(local_redirect_target(request, request.POST.get("next", ""), fallback=fallback))


def _render_cart(
    request: HttpRequest, *, line_error: tuple[int, str, str] | None = None, status: int = 200
) -> HttpResponse:
    """Render the cart; `line_error` (product id, what was typed, message) is shown at its line."""
    cart = _shopper_cart(request)
    lines = list(cart.lines_with_products()) if cart else []
    problems = [
        problem
        for line in lines
        if (problem := services.availability_problem(product=line.product, quantity=line.quantity))
    ]
    rows = []
    for line in lines:
        error = line_error if line_error and line_error[0] == line.product_id else None
        rows.append({"line": line, "typed": error[1] if error else line.quantity, "error": error[2] if error else ""})
    if line_error and not any(row["error"] for row in rows):
        messages.error(request, line_error[2])  # Not a line of this cart: say it at the top.
    context = {"cart": cart, "lines": lines, "rows": rows, "problems": problems}
    return render(request, "shop/cart.html", context, status=status)


def cart_detail(request: HttpRequest) -> HttpResponse:
    return _render_cart(request)


def _product_page(request: HttpRequest, product: Product, form: CartLineForm, *, status: int) -> HttpResponse:
    in_cart = services.quantity_in_cart(cart=_shopper_cart(request), product=product)
    return render(
        request, "shop/product_detail.html", {"product": product, "form": form, "in_cart": in_cart}, status=status
    )


def _rerender_product_with_errors(request: HttpRequest, form: CartLineForm) -> HttpResponse:
    product = form.cleaned_data.get("product") if hasattr(form, "cleaned_data") else None
    if product is None:
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
        return redirect(reverse("shop:cart") if request.path != reverse("shop:cart_add") else reverse("shop:catalog"))
    return _product_page(request, product, form, status=400)


@require_POST
def cart_add(request: HttpRequest) -> HttpResponse:
    form = CartLineForm(request.POST)
    if not form.is_valid():
        return _rerender_product_with_errors(request, form)
    product, quantity = form.cleaned_data["product"], form.cleaned_data["quantity"]
    try:
        services.add_to_cart(cart=_shopper_cart(request, create=True), product=product, quantity=quantity)
    except services.ShopError as error:
        form.add_error("quantity", error.message)
        return _product_page(request, product, form, status=409)
    messages.success(request, f"Added {quantity} × {product.name} to your cart.")
    return _redirect_back(request, reverse("shop:cart"))


@require_POST
def cart_update(request: HttpRequest) -> HttpResponse:
    """Set a line's quantity; a refusal is shown at that line, with what was typed still in the box."""
    form = CartUpdateForm(request.POST)
    typed = request.POST.get("quantity", "")[:12]
    if not form.is_valid():
        product = form.cleaned_data.get("product")
        message = " ".join(error for errors in form.errors.values() for error in errors)
        if product is None:  # No line to show it at.
            messages.error(request, message)
            return redirect("shop:cart")
        return _render_cart(request, line_error=(product.pk, typed, message), status=400)
    product, quantity = form.cleaned_data["product"], form.cleaned_data["quantity"]
    cart = _shopper_cart(request, create=True)
    try:
        services.update_cart_line(cart=cart, product=product, quantity=quantity)
    except services.ShopError as error:
        return _render_cart(request, line_error=(product.pk, typed, error.message), status=409)
    messages.success(request, f"Removed {product.name}." if quantity == 0 else f"Updated {product.name} to {quantity}.")
    return redirect("shop:cart")


@require_POST
def cart_remove(request: HttpRequest) -> HttpResponse:
    form = CartRemoveForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
        return redirect("shop:cart")
    cart = _shopper_cart(request)
    if cart is not None:
        services.remove_from_cart(cart=cart, product=form.cleaned_data["product"])
    messages.success(request, f"Removed {form.cleaned_data['product'].name}.")
    return redirect("shop:cart")


# Checkout ---------------------------------------------------------------------------


def _render_checkout(
    request: HttpRequest, form: CheckoutForm | None = None, *, new_token: bool = False, status: int = 200
):
    """Render the checkout page with the one-time token this session's next payment uses.

    The token is bound to the cart the page shows (its fingerprint): when the cart changes,
    the page gets a new token, and a form rendered for the old cart can no longer pay, so
    the amount charged is always the amount on the page that was submitted.
    """
    cart = services.get_cart(user=request.user)
    lines = list(cart.lines_with_products()) if cart else []
    if not lines:
        messages.info(request, "Your cart is empty.")
        return redirect("shop:catalog")
    shown = services.cart_fingerprint(cart)
    if (
        new_token
        or not request.session.get(CHECKOUT_TOKEN_SESSION_KEY)
        or request.session.get(CHECKOUT_FINGERPRINT_SESSION_KEY) != shown
    ):
        request.session[CHECKOUT_TOKEN_SESSION_KEY] = secrets.token_urlsafe(24)
        request.session[CHECKOUT_FINGERPRINT_SESSION_KEY] = shown
    line_problems = {
        line.pk: problem
        for line in lines
        if (problem := services.availability_problem(product=line.product, quantity=line.quantity))
    }
    addresses = services.list_addresses(user=request.user)
    if form is None:
        form = CheckoutForm(initial=_checkout_initial(request, addresses))
    context = {
        "form": form,
        "addresses": addresses,
        "cart": cart,
        "lines": [(line, line_problems.get(line.pk)) for line in lines],
        "has_problems": bool(line_problems),
        "payment_in_progress": Order.objects.for_user(request.user).filter(status=Order.Status.PENDING).first(),
        "checkout_token": request.session[CHECKOUT_TOKEN_SESSION_KEY],
    }
    return render(request, "shop/checkout.html", context, status=status)


def _checkout_initial(request: HttpRequest, addresses: list) -> dict:
    """Start from the address the shopper picked (`?address=<id>`), else their default one."""
    user = request.user
    initial = {"email": user.email, "full_name": user.get_full_name(), "save_address": True}
    chosen = request.GET.get("address", "")
    address = next((address for address in addresses if str(address.pk) == chosen), None)
    address = address or next((address for address in addresses if address.is_default), None)
    if address is not None:
        initial.update(services.ShippingAddress.of(address).__dict__, address_id=address.pk)
    return initial


def _token_of_earlier_order(request: HttpRequest, token: str) -> bool:
    # A resubmission of a checkout that already succeeded (the session moved on): it finds its order.
    return Order.objects.filter(checkout_token=token, user=request.user).exists()


async def checkout(request: HttpRequest) -> HttpResponse:
    """Show the checkout, or pay: the shopper waits for the bank, no thread does.

    Database work goes through sync_to_async; messages only queue on the request (the
    middleware stores them), so they are added directly.
    """
    # The session and the user in one trip to the request's thread (auser() makes two), kept
    # as request.user too: the page's rendering, in that thread, would otherwise load it again.
    request.user = user = await sync_to_async(get_user)(request)
    if not user.is_authenticated:
        # Say why the shopper lands on the login page, and that nothing is lost.
        messages.info(request, "Please log in or create an account to check out. Your cart will be waiting for you.")
        return redirect_to_login(request.get_full_path())
    if request.method == "GET":
        return await sync_to_async(_render_checkout)(request)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})

    form = CheckoutForm(request.POST)
    if not form.is_valid():
        return await sync_to_async(_render_checkout)(request, form, status=400)
    token = form.cleaned_data["checkout_token"]
    # The session's own token needs no query (nor a thread); any other must be an earlier order's.
    session_token = await request.session.aget(CHECKOUT_TOKEN_SESSION_KEY)
    if token != session_token and not await sync_to_async(_token_of_earlier_order)(request, token):
        messages.error(request, "This checkout form has expired. Please check your cart and pay again.")
        return await sync_to_async(_render_checkout)(request, new_token=True, status=409)
    # The cart this session's page showed; None for a resubmission of an earlier checkout,
    # which can only find its own order.
    shown = await request.session.aget(CHECKOUT_FINGERPRINT_SESSION_KEY) if token == session_token else None

    shipping = form.shipping_address()
    try:
        order = await services.place_order(
            user=user,
            checkout_token=token,
            card=form.card(),
            cart_fingerprint=shown,
            shipping=shipping,
            email=form.cleaned_data["email"],
        )
    except services.PaymentNotRecorded as unrecorded:
        # The database is down: no session, no messages, no context processors. A page
        # that needs none of them tells the shopper the truth; reconciliation does the rest.
        logger.error("Checkout %s by %s: %s", token[:8], user.pk, unrecorded)
        return render(None, "shop/payment_unrecorded.html", {"order_number": unrecorded.order_number}, status=202)
    except (services.CartChanged, services.CheckoutExpired) as error:
        messages.error(request, error.message)
        return await sync_to_async(_render_checkout)(request, new_token=True, status=409)
    except services.PaymentInProgress as error:
        messages.error(request, error.message)
        return redirect("shop:checkout")
    except services.ShopError as error:
        messages.error(request, error.message)
        return redirect("shop:cart")
    except PaymentError as error:
        logger.info("Checkout %s by %s refused: %s", token[:8], user.pk, error.message)
        # Shown in the card form, next to what to change (a banner at the top is off screen on a phone).
        form.add_error(None, error.message)
        # The refused token is spent at the bank: the next attempt gets a fresh one.
        return await sync_to_async(_render_checkout)(request, form, new_token=True, status=402)

    await request.session.apop(CHECKOUT_TOKEN_SESSION_KEY, None)
    await request.session.apop(CHECKOUT_FINGERPRINT_SESSION_KEY, None)
    if form.cleaned_data["save_address"] and order.checkout_token == token:
        try:
            await sync_to_async(services.remember_address)(user=user, address=shipping)
        except DatabaseError as error:  # The order is placed; a missing address book entry is no reason to fail.
            logger.warning("Order %s: could not remember the shipping address: %r", order.number, error)
    if order.status == Order.Status.PAID and order.checkout_token == token:
        messages.success(request, f"Thank you! Order {order.number} is paid.")
    elif order.status == Order.Status.PENDING:
        messages.info(
            request,
            f"Your payment for order {order.number} is being confirmed with the bank. "
            "This page updates as soon as it is settled.",
        )
    else:  # A resubmitted form of an order that has moved on since.
        messages.info(request, f"Order {order.number} is {order.get_status_display().lower()}.")
    return redirect(order)


# Orders and accounts ----------------------------------------------------------------


class OrderListView(LoginRequiredMixin, ListView):
    template_name = "shop/order_list.html"
    context_object_name = "orders"
    paginate_by = 10

    def get_queryset(self):
        return Order.objects.for_user(self.request.user).prefetch_related("lines")


class OrderDetailView(LoginRequiredMixin, DetailView):
    template_name = "shop/order_detail.html"
    context_object_name = "order"

    def get_object(self, queryset=None):
        # Another shopper's order is a 404, not a 403: its existence is not theirs to know.
        return get_object_or_404(
            Order.objects.select_related("user").prefetch_related("lines", "events", "payments"),
            number=self.kwargs["number"],
            user=self.request.user,
        )

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            timeline=services.order_timeline(order=self.object),
            can_cancel=services.shopper_cancel_problem(order=self.object) is None,
            **kwargs,
        )


@login_required
def order_cancel(request: HttpRequest, number: str) -> HttpResponse:
    """Ask "cancel this order?" (GET), then cancel it (POST): refund, stock back, notification."""
    order = get_object_or_404(Order, number=number, user=request.user)
    if request.method == "POST":
        try:
            services.cancel_order_for_shopper(order=order, user=request.user)
        except (services.InvalidTransition, PaymentError) as error:
            messages.error(request, error.message)
        else:
            messages.success(
                request,
                f"Order {order.number} is cancelled. The {format_money(order.total, order.currency)} "
                "you paid is on its way back to your card.",
            )
        return redirect(order)
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    problem = services.shopper_cancel_problem(order=order)
    return render(
        request, "shop/order_cancel.html", {"order": order, "problem": problem}, status=409 if problem else 200
    )


# Account ------------------------------------------------------------------------------


@login_required
def account(request: HttpRequest) -> HttpResponse:
    """The shopper's account: username, email (POST changes it), password, address book."""
    form = AccountEmailForm(request.POST or None, initial={"email": request.user.email})
    if request.method == "POST":
        if form.is_valid():
            services.change_email(user=request.user, email=form.cleaned_data["email"])
            messages.success(request, f"Your email is now {request.user.email}.")
            return redirect("shop:account")
        status = 400
    else:
        status = 200
    context = {
        "email_form": form,
        "addresses": services.list_addresses(user=request.user),
        "default_address": services.default_address(user=request.user),
    }
    return render(request, "shop/account.html", context, status=status)


class AccountPasswordView(auth_views.PasswordChangeView):
    """Django's password change (it keeps this session signed in), on the shop's page."""

    template_name = "shop/account_password.html"
    success_url = reverse_lazy("shop:account")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, "Your password was changed.")
        return response


def _address_form_page(request: HttpRequest, form: AddressBookForm, *, address=None, status: int = 200):
    return render(request, "shop/address_form.html", {"form": form, "address": address}, status=status)


@login_required
def address_add(request: HttpRequest) -> HttpResponse:
    form = AddressBookForm(request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            return _address_form_page(request, form, status=400)
        services.add_address(
            user=request.user, address=form.shipping_address(), make_default=form.cleaned_data["make_default"]
        )
        messages.success(request, "Address saved.")
        return redirect("shop:account")
    return _address_form_page(request, form)


@login_required
def address_edit(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        address = services.get_address(user=request.user, address_id=pk)
    except services.AddressNotFound as error:
        raise Http404(error.message) from error
    initial = {**services.ShippingAddress.of(address).__dict__, "make_default": address.is_default}
    form = AddressBookForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if not form.is_valid():
            return _address_form_page(request, form, address=address, status=400)
        services.update_address(user=request.user, address_id=pk, address=form.shipping_address())
        if form.cleaned_data["make_default"]:
            services.set_default_address(user=request.user, address_id=pk)
        messages.success(request, "Address updated.")
        return redirect("shop:account")
    return _address_form_page(request, form, address=address)


@require_POST
@login_required
def address_make_default(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.set_default_address(user=request.user, address_id=pk)
    except services.AddressNotFound as error:
        raise Http404(error.message) from error
    messages.success(request, "Your next orders will go to this address.")
    return redirect("shop:account")


@require_POST
@login_required
def address_delete(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.delete_address(user=request.user, address_id=pk)
    except services.AddressNotFound as error:
        raise Http404(error.message) from error
    messages.success(request, "Address removed. Orders already placed keep their address.")
    return redirect("shop:account")


class SignUpView(FormView):
    form_class = SignUpForm
    template_name = "registration/signup.html"

    def form_valid(self, form):
        user = form.save()
        self.request.shop_new_account = True  # The login receiver's "welcome back" is not for a new account.
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(self.request, f"Welcome, {user.username}! Your account is ready.")
        return HttpResponseRedirect(
            local_redirect_target(self.request, self.request.GET.get("next", ""), fallback=reverse("shop:catalog"))
        )


class LogoutView(auth_views.LogoutView):
    """Log out on POST, as Django does; on GET, show a page with the logout button.

    A GET must not log anyone out (any page could embed the link), but a typed or followed
    /accounts/logout/ deserves more than an empty 405.
    """

    http_method_names = ["get", "post", "options"]

    def get(self, request, *args, **kwargs):
        return render(request, "registration/logout.html", {"next": request.GET.get("next", "")})


# Security answers -------------------------------------------------------------------


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Explain a failed CSRF check (settings.CSRF_FAILURE_VIEW): nearly always a stale page.

    A form rendered before a login or logout (here or in another tab) carries a token of the
    old session. Rendered with the request, so the page's own forms get a fresh token.
    """
    return render(request, "403_csrf.html", {"reason": reason if settings.DEBUG else ""}, status=403)


def login_locked_out(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """The lockout page for a refused login (settings.AXES_LOCKOUT_CALLABLE), shop or admin.

    axes calls it with (request, response, credentials) from sync code and (request,
    credentials) from async code; neither is needed: the page names no account.
    """
    cool_off = settings.AXES_COOLOFF_TIME
    response = render(
        request,
        "registration/locked_out.html",
        {"cooloff_minutes": int(cool_off.total_seconds() // 60), "failure_limit": settings.AXES_FAILURE_LIMIT},
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )
    # The earliest moment a retry can succeed, for clients that read it.
    response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response

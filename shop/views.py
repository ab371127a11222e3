import logging
import secrets

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django.views.generic import DetailView, FormView, ListView

from . import services
from .forms import CartLineForm, CartRemoveForm, CartUpdateForm, CheckoutForm, SignUpForm
from .models import Order, Product
from .payments import PaymentError
from .receivers import SESSION_CART_KEY
from .redirects import local_redirect_target

logger = logging.getLogger(__name__)

CHECKOUT_TOKEN_SESSION_KEY = "checkout_token"
CHECKOUT_FINGERPRINT_SESSION_KEY = "checkout_cart"


class CatalogView(ListView):
    queryset = Product.objects.available()
    template_name = "shop/catalog.html"
    context_object_name = "products"
    paginate_by = 12


class ProductDetailView(DetailView):
    queryset = Product.objects.available()
    template_name = "shop/product_detail.html"
    context_object_name = "product"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("form", CartLineForm(initial={"product": self.object.pk, "quantity": 1}))
        return context


# Cart -------------------------------------------------------------------------------


def _shopper_cart(request: HttpRequest, *, create: bool = False):
    cart = services.get_cart(user=request.user, cart_id=request.session.get(SESSION_CART_KEY), create=create)
    if cart is not None and not request.user.is_authenticated:
        request.session[SESSION_CART_KEY] = cart.pk
    return cart


def _redirect_back(request: HttpRequest, fallback: str) -> HttpResponse:
    return HttpResponseRedirect(local_redirect_target(request, request.POST.get("next", ""), fallback=fallback))


def cart_detail(request: HttpRequest) -> HttpResponse:
    cart = _shopper_cart(request)
    lines = list(cart.lines_with_products()) if cart else []
    problems = [
        problem
        for line in lines
        if (problem := services.availability_problem(product=line.product, quantity=line.quantity))
    ]
    return render(request, "shop/cart.html", {"cart": cart, "lines": lines, "problems": problems})


def _rerender_product_with_errors(request: HttpRequest, form: CartLineForm) -> HttpResponse:
    product = form.cleaned_data.get("product") if hasattr(form, "cleaned_data") else None
    if product is None:
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
        return redirect(reverse("shop:cart") if request.path != reverse("shop:cart_add") else reverse("shop:catalog"))
    return render(request, "shop/product_detail.html", {"product": product, "form": form}, status=400)


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
        return render(request, "shop/product_detail.html", {"product": product, "form": form}, status=409)
    messages.success(request, f"Added {quantity} × {product.name} to your cart.")
    return _redirect_back(request, reverse("shop:cart"))


@require_POST
def cart_update(request: HttpRequest) -> HttpResponse:
    form = CartUpdateForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
        return redirect("shop:cart")
    product, quantity = form.cleaned_data["product"], form.cleaned_data["quantity"]
    cart = _shopper_cart(request, create=True)
    try:
        services.update_cart_line(cart=cart, product=product, quantity=quantity)
    except services.ShopError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, f"Removed {product.name}." if quantity == 0 else f"Updated {product.name} to {quantity}."
        )
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
    context = {
        "form": CheckoutForm() if form is None else form,
        "cart": cart,
        "lines": [(line, line_problems.get(line.pk)) for line in lines],
        "has_problems": bool(line_problems),
        "payment_in_progress": Order.objects.for_user(request.user).filter(status=Order.Status.PENDING).first(),
        "checkout_token": request.session[CHECKOUT_TOKEN_SESSION_KEY],
    }
    return render(request, "shop/checkout.html", context, status=status)


def _checkout_token_is_current(request: HttpRequest, token: str) -> bool:
    if token == request.session.get(CHECKOUT_TOKEN_SESSION_KEY):
        return True
    # A resubmission of a checkout that already succeeded (the session moved on): it finds its order.
    return Order.objects.filter(checkout_token=token, user=request.user).exists()


@login_required
async def checkout(request: HttpRequest) -> HttpResponse:
    """Show the checkout, or pay: the shopper waits for the bank, no thread does.

    Database work goes through sync_to_async; messages only queue on the request (the
    middleware stores them), so they are added directly.
    """
    if request.method == "GET":
        return await sync_to_async(_render_checkout)(request)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})

    form = CheckoutForm(request.POST)
    if not form.is_valid():
        return await sync_to_async(_render_checkout)(request, form, status=400)
    token = form.cleaned_data["checkout_token"]
    if not await sync_to_async(_checkout_token_is_current)(request, token):
        messages.error(request, "This checkout form has expired. Please check your cart and pay again.")
        return await sync_to_async(_render_checkout)(request, new_token=True, status=409)
    # The cart this session's page showed; None for a resubmission of an earlier checkout,
    # which can only find its own order.
    shown = await request.session.aget(CHECKOUT_FINGERPRINT_SESSION_KEY)
    if token != await request.session.aget(CHECKOUT_TOKEN_SESSION_KEY):
        shown = None

    user = await request.auser()
    try:
        order = await services.place_order(user=user, checkout_token=token, card=form.card(), cart_fingerprint=shown)
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
        messages.error(request, error.message)
        # The refused token is spent at the bank: the next attempt gets a fresh one.
        return await sync_to_async(_render_checkout)(request, form, new_token=True, status=402)

    await request.session.apop(CHECKOUT_TOKEN_SESSION_KEY, None)
    await request.session.apop(CHECKOUT_FINGERPRINT_SESSION_KEY, None)
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
            Order.objects.prefetch_related("lines", "events", "payments"),
            number=self.kwargs["number"],
            user=self.request.user,
        )


class SignUpView(FormView):
    form_class = SignUpForm
    template_name = "registration/signup.html"

    def form_valid(self, form):
        user = form.save()
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(self.request, f"Welcome, {user.username}! Your account is ready.")
        return HttpResponseRedirect(
            local_redirect_target(self.request, self.request.GET.get("next", ""), fallback=reverse("shop:catalog"))
        )

"""The inbox page and a small JSON API for clients that cannot hold a socket.

The API views are async and use the async ORM: a poll holds no thread.
"""

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.generic import ListView

from . import alerts, escalation, services
from .consumers import parse_notification_id
from .forms import PreferencesForm, StockAlertForm
from .models import Notification, NotificationStream

API_PAGE_SIZE = 50


class InboxView(LoginRequiredMixin, ListView):
    template_name = "notifications/inbox.html"
    context_object_name = "notifications"
    paginate_by = 20

    def get_queryset(self):
        return Notification.objects.for_user(self.request.user).order_by("-pk")


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


async def _signed_in_user(request: HttpRequest):
    user = await request.auser()
    return user if user.is_authenticated else None


@require_GET
async def api_list(request: HttpRequest) -> JsonResponse:
    """List the user's notifications newest first; with ?after_seq=N (or ?after=ID) the newer ones, oldest first."""
    if (user := await _signed_in_user(request)) is None:
        return _error(401, "unauthenticated", "Sign in to see your notifications.")
    mine = Notification.objects.for_user(user)
    # Read before the page: every notification up to it is committed, so a poller that goes on
    # from the page's last seq misses nothing.
    last_seq = await NotificationStream.objects.alast_seq(user.pk)
    after_seq, after = request.GET.get("after_seq"), request.GET.get("after")
    if after_seq is not None:
        if (cursor := parse_notification_id(after_seq)) is None:
            return _error(400, "bad_id", "`after_seq` must be a sequence number (a whole number).")
        page = mine.filter(seq__gt=cursor).order_by("seq")[:API_PAGE_SIZE]
    elif after is not None:
        if (after_id := parse_notification_id(after)) is None:
            return _error(400, "bad_id", "`after` must be a notification id (a whole number).")
        page = mine.filter(pk__gt=after_id).order_by("pk")[:API_PAGE_SIZE]
    else:
        page = mine.order_by("-pk")[:API_PAGE_SIZE]
    notifications = [notification.to_message() async for notification in page]
    return JsonResponse(
        {
            "notifications": notifications,
            "unread": await mine.unread().acount(),
            "has_more": len(notifications) == API_PAGE_SIZE,
            "last_seq": last_seq,
        }
    )


@require_GET
async def api_unread(request: HttpRequest) -> JsonResponse:
    if (user := await _signed_in_user(request)) is None:
        return _error(401, "unauthenticated", "Sign in to see your notifications.")
    return JsonResponse({"unread": await Notification.objects.for_user(user).unread().acount()})


def _local_path(target, request: HttpRequest) -> str | None:
    """`target` if it is a path on this site, else None.

    redirect() takes anything without "/" or "." for a URL pattern name: `next=foo` would
    raise NoReverseMatch after the read was saved. Only a path starting with "/" is followed.
    """
    if not isinstance(target, str) or not target.startswith("/"):
        return None
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return None  # "//evil.example/" and the like.
    return target


def _wants_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json" or "application/json" in request.headers.get("Accept", "")


@require_POST
async def api_read(request: HttpRequest) -> HttpResponse:
    """Mark one notification (`id`) or all (`all`) read. Takes JSON or a plain form post.

    A form post (the inbox without JavaScript) is redirected back to `next`.
    """
    if (user := await _signed_in_user(request)) is None:
        return _error(401, "unauthenticated", "Sign in to see your notifications.")
    if request.content_type == "application/json":
        try:
            payload = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested thousands of levels deep.
            return _error(400, "bad_json", "The body is not valid JSON (or is nested too deeply).")
        if not isinstance(payload, dict):
            return _error(400, "bad_message", "Send a JSON object with `id` or `all`.")
    else:
        payload = request.POST
    if payload.get("all") not in (None, False, "", "0", "false"):
        await services.amark_all_read(user_id=user.pk)
    else:
        if (notification_id := parse_notification_id(payload.get("id"))) is None:
            return _error(400, "bad_id", "Give the `id` of a notification, or `all`.")
        if not await services.amark_read(user_id=user.pk, notification_id=notification_id):
            return _error(404, "not_found", f"No notification {notification_id} of yours.")
    if not _wants_json(request):
        return redirect(_local_path(payload.get("next"), request) or reverse("notifications:inbox"))
    return JsonResponse({"unread": await Notification.objects.for_user(user).unread().acount()})


# Preferences and back-in-stock requests ------------------------------------------------------


@login_required
def preferences(request: HttpRequest) -> HttpResponse:
    """Per kind of notification: in the app only, or also by email when it stays unread."""
    minutes = settings.NOTIFICATIONS_EMAIL_AFTER_MINUTES
    initial = PreferencesForm.initial_for(escalation.email_preferences(user=request.user))
    form = PreferencesForm(request.POST or None, initial=initial, minutes=minutes)
    if request.method == "POST":
        if form.is_valid():
            escalation.set_email_preferences(user=request.user, by_email=form.by_email())
            messages.success(request, "Your notification preferences are saved.")
            return redirect("notifications:preferences")
        status = 400
    else:
        status = 200
    context = {"form": form, "minutes": minutes, "has_email": bool(request.user.email)}
    return render(request, "notifications/preferences.html", context, status=status)


def _back_to_product(request: HttpRequest, form: StockAlertForm) -> HttpResponse:
    product = form.cleaned_data.get("product") if form.is_valid() else None
    fallback = product.get_absolute_url() if product is not None else reverse("shop:catalog")
    return redirect(_local_path(request.POST.get("next"), request) or fallback)


@require_POST
@login_required
def stock_alert(request: HttpRequest) -> HttpResponse:
    """Ask to be told when a sold-out product is back in stock."""
    form = StockAlertForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
        return _back_to_product(request, form)
    product = form.cleaned_data["product"]
    try:
        alerts.request_stock_alert(user=request.user, product=product)
    except alerts.StockAlertRefused as refused:
        messages.info(request, refused.message)
    else:
        messages.success(request, f"We will tell you when {product.name} is back in stock.")
    return _back_to_product(request, form)


@require_POST
@login_required
def stock_alert_cancel(request: HttpRequest) -> HttpResponse:
    form = StockAlertForm(request.POST)
    if form.is_valid() and alerts.cancel_stock_alert(user=request.user, product=form.cleaned_data["product"]):
        messages.success(request, f"We will not tell you about {form.cleaned_data['product'].name}.")
    return _back_to_product(request, form)

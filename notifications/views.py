"""The inbox page and a small JSON API for clients that cannot hold a socket.

The API views are async and use the async ORM: a poll holds no thread.
"""

import json

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.generic import ListView

from . import services
from .consumers import parse_notification_id
from .models import Notification

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
    """List the user's notifications newest first, or with ?after=ID those after ID, oldest first."""
    if (user := await _signed_in_user(request)) is None:
        return _error(401, "unauthenticated", "Sign in to see your notifications.")
    mine = Notification.objects.for_user(user)
    after = request.GET.get("after")
    if after is not None:
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
        }
    )


@require_GET
async def api_unread(request: HttpRequest) -> JsonResponse:
    if (user := await _signed_in_user(request)) is None:
        return _error(401, "unauthenticated", "Sign in to see your notifications.")
    return JsonResponse({"unread": await Notification.objects.for_user(user).unread().acount()})


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
        except ValueError:
            return _error(400, "bad_json", "The body is not valid JSON.")
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
        target = payload.get("next", "")
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = "notifications:inbox"
        return redirect(target)
    return JsonResponse({"unread": await Notification.objects.for_user(user).unread().acount()})

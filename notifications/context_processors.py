from .models import Notification

MISSED_ON_PAGE = 5


def notification_summary(request):
    """Give every page of a signed-in user the bell's count and where the socket resumes.

    `notifications_last_id` is the newest id the page already accounts for, so the socket
    resumes right after it: no gap between render and subscribe. Notifications no browser
    has shown yet are rendered as `notifications_missed`, for the client to toast once.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    mine = Notification.objects.for_user(user)
    missed = list(mine.undelivered().unread().order_by("-pk")[:MISSED_ON_PAGE])
    return {
        "notifications_unread": mine.unread().count(),
        "notifications_last_id": mine.order_by("-pk").values_list("pk", flat=True).first() or 0,
        "notifications_missed": [notification.to_message() for notification in reversed(missed)],
    }

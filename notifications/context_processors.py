from django.urls import reverse

from .models import Notification, NotificationStream

MISSED_ON_PAGE = 5


def notification_summary(request):
    """Give every page of a signed-in user the bell's count and the socket client's configuration.

    `last_seq` is the newest sequence number the page accounts for, so the socket resumes right
    after it (`?after_seq=`): no gap between render and subscribe, even when two notifications
    commit in the opposite order of their ids. `last_id` stays for older clients.
    Notifications no browser has shown yet travel as `missed`, for the client to toast once
    and acknowledge.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # Read first: a notification committed while this runs is then past last_seq and replayed
    # (the client drops a twin by id), never counted as shown without being in `missed`.
    last_seq = NotificationStream.objects.last_seq(user.pk)
    mine = Notification.objects.for_user(user)
    unread = mine.unread().count()
    missed = list(mine.undelivered().unread().order_by("-pk")[:MISSED_ON_PAGE])
    return {
        "notifications_unread": unread,
        "notifications_config": {
            "socket_path": "/ws/notifications/",
            "last_id": mine.order_by("-pk").values_list("pk", flat=True).first() or 0,
            "last_seq": last_seq,
            "unread": unread,
            "missed": [notification.to_message() for notification in reversed(missed)],
            "read_url": reverse("notifications:api_read"),
            "inbox_url": reverse("notifications:inbox"),
        },
    }

"""ASGI entry point: HTTP through Django, WebSockets through Channels, served by daphne."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
# Set up Django (apps, models) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from notifications.middleware import ServerEventLoopMiddleware  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app

application = ServerEventLoopMiddleware(
    ProtocolTypeRouter(
        {
            "http": http_app,
            # Browsers send cookies on cross-site handshakes: only our own hosts may open sockets.
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)

# Everything loaded so far lives as long as the process: move it out of the collector's
# reach, so full GC passes (frequent with thousands of sockets) stop walking it.
gc.freeze()

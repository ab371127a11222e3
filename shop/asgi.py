"""ASGI entry point: HTTP through Django, WebSockets through Channels, served by daphne."""

import gc
import os
import pprint
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
# Set up Django (apps, models) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from notifications.middleware import ServerEventLoopMiddleware, SocketSessionMiddleware  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app

application = ServerEventLoopMiddleware(
    ProtocolTypeRouter(
        {
            "http": http_app,
            # Browsers send cookies on cross-site handshakes: only our own hosts may open sockets.
            # The session check keeps two numbers per socket, not Channels' session and user objects.
            "websocket": AllowedHostsOriginValidator(SocketSessionMiddleware(URLRouter(websocket_urlpatterns))),
        }
    )
)


def _pformat_when_debugging(value, *args, **kwargs):
    """pprint.pformat() for autobahn's debug lines, done only when txaio keeps them."""
    import txaio

    if txaio.get_global_log_level() in {"debug", "trace"}:
        return pprint.pformat(value, *args, **kwargs)
    return "(not formatted: debug logging is off)"


# autobahn (daphne's WebSocket layer) pretty-prints its whole configuration on every connection
# for a debug line that is dropped unless txaio logs at debug level: about 0.5 ms of CPU per
# socket, of the 3 ms daphne spends opening and closing one. Under daphne only (it has imported
# autobahn before loading this module); the lines are the same when debug logging is on.
if "autobahn.websocket.protocol" in sys.modules:
    sys.modules["autobahn.websocket.protocol"].pformat = _pformat_when_debugging


def send_websocket_data_at_once(send_data):
    """Wrap autobahn's sendData() so a frame goes to the socket now, not on the next loop turn.

    Twisted's transport.write() only buffers: it registers the socket for writing (an
    epoll_ctl), the reactor sends on a later turn of the loop, then unregisters it (another).
    Profiled during a bulk of 5000 notifications to 1000 sockets, that registering was a third
    of the consumer's time per frame, and a single push's frame waited for the rest of the
    loop's turn. Here a frame is sent at once when nothing is waiting before it on a plain TCP
    socket of an open WebSocket; whatever the kernel does not take (a full buffer), a TLS
    connection, a closing one and anything queued go through Twisted as before, in order.
    autobahn sets TCP_NODELAY on these sockets, so each frame leaves without waiting.
    """

    def sendData(self, data, sync=False, chopsize=None):
        transport = self.transport
        if (
            sync
            or chopsize
            or self.send_queue
            or self.logOctets
            or self.state != self.STATE_OPEN
            or getattr(transport, "TLS", True)
            or not getattr(transport, "connected", False)
            or getattr(transport, "_writeDisconnected", True)
            or getattr(transport, "dataBuffer", b"x")
            or getattr(transport, "_tempDataBuffer", True)
        ):
            return send_data(self, data, sync, chopsize)
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The connection is broken: Twisted's own write finds out and closes it as usual.
            return send_data(self, data, sync, chopsize)
        self.trafficStats.outgoingOctetsWireLevel += sent
        if sent < len(data):
            send_data(self, data[sent:], sync, chopsize)

    sendData.sends_at_once = True
    sendData.__wrapped__ = send_data
    return sendData


if "daphne.ws_protocol" in sys.modules:
    _protocol = sys.modules["daphne.ws_protocol"].WebSocketProtocol
    if not getattr(_protocol.sendData, "sends_at_once", False):
        _protocol.sendData = send_websocket_data_at_once(_protocol.sendData)

# Everything loaded so far lives as long as the process: move it out of the collector's
# reach, so full GC passes (frequent with thousands of sockets) stop walking it.
gc.freeze()
# Each open socket keeps a few hundred objects (daphne's protocol, the consumer, its tasks),
# and gc.freeze() cannot cover those made later. With the default thresholds (700, 10, 10)
# a process holding 10,000 sockets ran a full pass over millions of objects every few
# seconds of traffic, each one stalling every socket (p99 of a push 61-100 ms, once 1.04 s).
# Fewer young collections, and far fewer full ones; garbage without cycles is freed at once
# by reference counting anyway.
gc.set_threshold(50_000, 50, 100)

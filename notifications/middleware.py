import asyncio

from .services import remember_server_loop


class ServerEventLoopMiddleware:
    """ASGI middleware noting the server's event loop, where pushes from sync code must run.

    The in-memory channel layer's queues belong to that loop; a push made on another loop
    would not wake the socket waiting on them.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        remember_server_loop(asyncio.get_running_loop())
        return await self.app(scope, receive, send)

"""Stand-ins for what lies outside the project: the channel layer (Redis) and the mail server."""

import asyncio
import smtplib

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.mail.backends.base import BaseEmailBackend


class SpyLayer(InMemoryChannelLayer):
    """The in-memory layer, remembering every group_send."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.group_sends: list[tuple[str, dict]] = []

    async def group_send(self, group, message):
        self.group_sends.append((group, message))
        await super().group_send(group, message)


class BrokenLayer(InMemoryChannelLayer):
    """Sockets still connect (group_add works), but every push fails: Redis went down."""

    async def group_send(self, group, message):
        raise ConnectionError("Redis is down")


class HangingLayer(InMemoryChannelLayer):
    """Every push stalls forever: Redis accepts the connection and never answers."""

    async def group_send(self, group, message):
        await asyncio.sleep(3600)


class BrokenEmailBackend(BaseEmailBackend):
    """An SMTP server that hangs up."""

    def send_messages(self, email_messages):
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


def use_layer(settings, layer_class):
    """Make `layer_class` the project's channel layer for this test, and return it."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{layer_class.__module__}.{layer_class.__qualname__}"}}
    return get_channel_layer()


async def wait_until(condition, *, timeout: float) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds (Python 3.10 has no asyncio.timeout)."""

    async def poll():
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


class UnreachableLayer(InMemoryChannelLayer):
    """Redis is down: a socket cannot join its groups, nothing can be pushed."""

    async def group_add(self, group, channel):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    async def group_send(self, group, message):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class FailingReceiveLayer(InMemoryChannelLayer):
    """Redis went away under an open socket: the layer's blocking receive fails (after its retries)."""

    broken = False

    async def receive(self, channel):
        while not self.broken:
            await asyncio.sleep(0.01)
        raise ConnectionError("Connection closed by server.")

"""The channel layer over Redis: channels-redis's pub/sub layer, with what the sockets rely on when Redis fails.

Why pub/sub and not channels-redis's core layer: a push is one PUBLISH that Redis hands to the
subscribed processes at once, where the core layer runs a Lua script per group, queues the
message in a sorted set per socket and wakes a blocking read (BZPOPMIN) per process; measured
side by side (bench, push_latency), the push takes about half as long. It also has no
`capacity` to overflow (the core layer drops group messages silently past it) and leaves
nothing in Redis when a process dies: its subscriptions end with its connection, where the core
layer keeps group members until `group_expiry`.

What this class adds to channels_redis.pubsub.RedisPubSubChannelLayer:

- group_send_many(): many group messages in one pipeline (a bulk of notifications), where
  group_send() costs a round trip each under the shard's lock.
- A socket's own channel is a queue in its process only (no SUBSCRIBE per socket): nothing here
  sends to another process's socket by name, only to groups, and the handshake costs one
  Redis round trip less. `send()` to such a channel delivers in the process.
- When redis-py has given up on the subscription connection (after the host's `retry`), every
  socket of the process gets one `layer.lost` event (the consumer closes it with 1013, the
  client comes back and resumes), and one warning is logged instead of a traceback a second.
- A push waits (within the caller's timeout) until this process's subscription is back after a
  Redis restart, so a process's own sockets miss nothing. A process whose subscription is
  still reconnecting misses what others publish meanwhile (pub/sub keeps nothing); those sockets
  see the gap at their next heartbeat and resume (README: sequence and gap recovery).
"""

import asyncio
import logging
import uuid

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, decode_hosts

logger = logging.getLogger(__name__)


class _Shard(RedisSingleShardConnection):
    async def publish(self, channel, message):
        await self._subscription_back()
        await super().publish(channel, message)

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """PUBLISH each (channel, message) in one round trip (a pipeline), in their order."""
        await self._subscription_back()
        # The shard's lock serializes its commands: one PUBLISH at a time took a round trip
        # each, so 5000 pushes queued behind each other for seconds.
        async with self._lock:
            self._ensure_redis()
            pipeline = self._redis.pipeline(transaction=False)
            for channel, message in messages:
                pipeline.publish(channel, message)
            await pipeline.execute()

    async def _subscription_back(self):
        # After a Redis restart the subscription connection is down until redis-py reconnects it
        # (and resubscribes, in the same step): a message published meanwhile would reach none
        # of this process's sockets. Wait for it; the caller's timeout bounds the wait.
        while (
            self._pubsub is not None
            and self._pubsub.connection is not None
            and not self._pubsub.connection.is_connected
        ):
            await asyncio.sleep(0.01)

    async def _do_receiving(self):
        failed = False
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
                if failed:
                    logger.warning("The channel layer reaches Redis again")
                    failed = False
            except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
                raise
            except Exception as error:
                # redis-py reconnects (and resubscribes) by itself within the host's retries; an
                # error here means it gave up: the sockets are told once, and reconnect later.
                if not failed:
                    failed = True
                    logger.warning(
                        "The channel layer lost Redis (%s); this process's sockets are closed with 1013",
                        f"{type(error).__name__}: {error}"[:200],
                    )
                    self.channel_layer.report_lost(error)
                await asyncio.sleep(1)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shards = [_Shard(shard.host, self) for shard in self._shards]

    async def new_channel(self, prefix="specific."):
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.channels[channel] = asyncio.Queue()
        return channel

    async def send(self, channel, message):
        if channel in self.channels:
            self.channels[channel].put_nowait(self.channel_layer.serialize(message))
            return
        await super().send(channel, message)

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        by_shard: dict[_Shard, list[tuple[str, bytes]]] = {}
        for group, message in messages:
            channel = self._get_group_channel_name(group)
            by_shard.setdefault(self._get_shard(channel), []).append((channel, self.channel_layer.serialize(message)))
        for shard, published in by_shard.items():
            await shard.publish_many(published)

    def report_lost(self, error: Exception) -> None:
        event = self.channel_layer.serialize({"type": "layer.lost", "error": f"{type(error).__name__}: {error}"[:200]})
        for queue in self.channels.values():
            queue.put_nowait(event)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer with process-local socket channels and 1013 on a lost Redis."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The host options (timeouts, retry, pool size), as the core layer exposes them.
        self.hosts = decode_hosts(kwargs.get("hosts"))

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        """group_send() of each (group, message), in one round trip to Redis per shard, in order."""
        await self._get_layer().group_send_many(messages)

    async def close_pools(self):
        """Close this event loop's Redis connections (as the core layer's close_pools() does)."""
        layer = self._layers.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.flush()

    def _get_layer(self):
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer

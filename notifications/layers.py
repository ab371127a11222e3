"""The channel layer over Redis: channels-redis's pub/sub layer, with what the sockets rely on when Redis fails.

Why pub/sub and not channels-redis's core layer: a push is one PUBLISH that Redis hands to the
subscribed processes at once, where the core layer runs a Lua script per group, queues the
message in a sorted set per socket and wakes a blocking read (BZPOPMIN) per process; measured
side by side (bench, push_latency), the push takes about half as long. It also has no
`capacity` to overflow (the core layer drops group messages silently past it) and leaves
nothing in Redis when a process dies: its subscriptions end with its connection, where the core
layer keeps group members until `group_expiry`.

What this class adds to channels_redis.pubsub.RedisPubSubChannelLayer:

- group_send_many(): many group messages in one round trip (a bulk of notifications), where
  group_send() costs a round trip each under the shard's lock. They reach this process's own
  members at once (below); the other processes get them as one message per BULK_CHUNK on a
  channel of the layer's own (the bulk channel, which every process with sockets subscribes to
  before its first group) and each hands them to its members of those groups. Sent as one
  PUBLISH a group, a bulk of 5000 cost this process 60 ms of CPU to send through redis-py and
  about 110 ms more to read its own copies back (22 us each), on the loop that writes the
  frames. One process's messages still reach every other in the order it sent them: a
  subscription connection gets its channels' messages in the order Redis took them. The price:
  every process with sockets reads every bulk (about 400 KB per 1000 notifications), its own
  users' or not; and a process that falls behind by more than Redis's pub/sub output buffer
  (client-output-buffer-limit pubsub, 32 MB by default: some 80,000 notifications) is
  disconnected by Redis, and its sockets are closed with 4013 and come back to resume. During a
  rolling deploy, processes still on the code before the bulk channel miss bulks: their sockets
  see the gap at the next heartbeat and resume.
- A socket's own channel is a queue in its process only (no SUBSCRIBE per socket): nothing here
  sends to another process's socket by name, only to groups, and the handshake costs one
  Redis round trip less. `send()` to such a channel delivers in the process.
- A group message reaches this process's own members at once, from the sender's hands, not
  after the round trip through Redis (PUBLISH, then this process's subscription reading it
  back): on a push that round trip and the reader's wake-up were about 0.9 ms of the 2.5 ms from
  commit to frame (bench, push_latency), and in a bulk each chunk's 1000 messages waited for the
  pipeline to be sent and read back. It is still published, for the other processes' members;
  the copy that comes back to this process is recognised by the origin mark it carries (a
  random id per process and loop, at a fixed place of the serialized message) and dropped, and
  receive() removes the mark, so consumers see the message as it was sent. Messages from other
  processes are delivered when they arrive, as before: only a process's own messages skip the
  queue, and the order of one event loop's messages is kept (a bulk's frames stay in seq
  order). A push sent from another loop of the same process (a notify() outside the server's
  loop, through async_to_sync) has a layer and an origin of its own and takes the trip through
  Redis, so it may overtake or trail the server loop's own: the client orders frames by `seq`
  and resumes over a gap (README: sequence and gap recovery).
  With Redis down the process's own members still get it; the send still fails (and is logged)
  for the others. A serializer that encrypts hides the mark: then every message takes the trip.
- When redis-py has given up on the subscription connection (after the host's `retry`), every
  socket of the process gets one `layer.lost` event (the consumer closes it with 1013, the
  client comes back and resumes), and one warning is logged instead of a traceback a second.
- After a Redis restart a PUBLISH waits (within the caller's timeout) until this process's
  subscription is back: the process's own members already have the message, and the wait makes
  /readyz's probe, which travels as a push does, fail while the process cannot hear the others.
  A process whose subscription is still reconnecting misses what others publish meanwhile
  (pub/sub keeps nothing); those sockets see the gap at their next heartbeat and resume (README:
  sequence and gap recovery).
"""

import asyncio
import logging
import uuid

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, decode_hosts

logger = logging.getLogger(__name__)

# The key of a group message's origin mark (see the module docstring); never seen by consumers.
ORIGIN_KEY = "__origin__"
# Group messages of a bulk per message on the bulk channel (about 400 KB for notifications).
BULK_CHUNK = 1000


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

    def _receive_message(self, message):
        if message is None:
            return
        layer = self.channel_layer
        # This process's own group messages were delivered here when they were sent.
        if layer.is_own(message["data"]):
            return
        name = message["channel"]
        if (name.decode() if isinstance(name, bytes) else name) == layer.bulk_channel:
            layer.deliver_bulk(message["data"])
            return
        super()._receive_message(message)

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
        self.origin = uuid.uuid4().hex
        # What follows a serialized message's map header when it starts with this origin's mark.
        # Only where the serializer writes it as plain msgpack (no encryption, no random
        # prefix): otherwise the echo could not be told apart, and messages take the round trip.
        self._own_mark = self.channel_layer.serialize({ORIGIN_KEY: self.origin})[1:]
        probe = self._marked({"type": "probe"})
        self._local_first = self.is_own(probe) and self.channel_layer.deserialize(probe)[ORIGIN_KEY] == self.origin
        # A bulk's group messages travel to the other processes as one message per BULK_CHUNK
        # on this channel, which every process with sockets subscribes to (module docstring).
        self.bulk_channel = f"{self.prefix}__bulk__"
        self._bulk = self._local_first and len(self._shards) == 1

    async def group_add(self, group, channel):
        if self._bulk:
            # A member at once, before any round trip: this process's own pushes reach it from
            # now on (they are delivered here, not read back from Redis).
            self.groups.setdefault(self._get_group_channel_name(group), set()).add(channel)
            shard = self._shards[0]
            # Before the group's own SUBSCRIBE, on the same connection: a bulk sent once the
            # group's subscription is in place reaches this process.
            if self.bulk_channel not in shard._subscribed_to:
                await shard.subscribe(self.bulk_channel)
        await super().group_add(group, channel)

    def deliver_bulk(self, data: bytes) -> None:
        """Deliver another process's bulk to this process's members of its groups."""
        try:
            messages = self.channel_layer.deserialize(data)["messages"]
            for group_channel, message in messages:
                self._deliver_here(group_channel, message)
        except Exception as error:  # Never let one bad message stop the subscription's reader.
            logger.warning("Dropped a bulk of group messages that could not be read: %r", error)

    def _marked(self, message: dict) -> bytes:
        return self.channel_layer.serialize({ORIGIN_KEY: self.origin, **message})

    def is_own(self, data: bytes) -> bool:
        """Whether a message read from Redis was sent by this layer (and so delivered already)."""
        # A msgpack map's header is 1 byte up to 15 keys, 3 bytes up to 65535.
        return data.startswith(self._own_mark, 1) or data.startswith(self._own_mark, 3)

    def _deliver_here(self, group_channel: str, data: bytes) -> None:
        for channel in self.groups.get(group_channel, ()):
            queue = self.channels.get(channel)
            if queue is not None:
                queue.put_nowait(data)

    async def receive(self, channel):
        message = await super().receive(channel)
        message.pop(ORIGIN_KEY, None)
        return message

    async def group_send(self, group, message):
        if not self._local_first:
            await super().group_send(group, message)
            return
        group_channel = self._get_group_channel_name(group)
        data = self._marked(message)
        self._deliver_here(group_channel, data)
        await self._get_shard(group_channel).publish(group_channel, data)

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
        if self._bulk:
            batch = []
            for group, message in messages:
                group_channel = self._get_group_channel_name(group)
                data = self._marked(message)
                self._deliver_here(group_channel, data)
                batch.append((group_channel, data))
            chunks = [
                self._marked({"type": "bulk", "messages": batch[start : start + BULK_CHUNK]})
                for start in range(0, len(batch), BULK_CHUNK)
            ]
            await self._shards[0].publish_many([(self.bulk_channel, chunk) for chunk in chunks])
            return
        by_shard: dict[_Shard, list[tuple[str, bytes]]] = {}
        for group, message in messages:
            channel = self._get_group_channel_name(group)
            if self._local_first:
                data = self._marked(message)
                self._deliver_here(channel, data)
            else:
                data = self.channel_layer.serialize(message)
            by_shard.setdefault(self._get_shard(channel), []).append((channel, data))
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

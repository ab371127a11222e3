"""Liveness and readiness for the proxy and the orchestrator: /healthz and /readyz.

/healthz says the process serves requests and touches nothing else, so an outage of the
database or Redis never gets a healthy process restarted. /readyz says whether this process
can do its work right now: the database answers a query and the channel layer carries a
message, each within READY_CHECK_TIMEOUT seconds. Both are public, so neither answer names a
host, a user or an error message: the reason goes to the log.
"""

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

READY_CHECK_TIMEOUT = 1.0
# The database check runs in threads of its own: a database that never answers ties up these
# two, never the threads that serve requests. A probe that finds both busy times out like the
# rest, and its queued check is cancelled.
_database_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz-db")
NO_STORE = {"Cache-Control": "no-store"}


async def healthz(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process serves requests; no database, no channel layer."""
    return JsonResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when the database and the channel layer both answer in time, else 503 naming the part."""
    database, channel_layer = await asyncio.gather(
        _run_check("database", _check_database()),
        _run_check("channel_layer", _check_channel_layer()),
    )
    checks = {"database": database, "channel_layer": channel_layer}
    ready = all(result == "ok" for result in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
        headers=NO_STORE,
    )


async def _run_check(name: str, check) -> str:
    """Await `check`; return "ok", "timeout" or "error" (the reason is logged, never returned)."""
    try:
        await asyncio.wait_for(check, READY_CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        logger.warning("readyz: the %s check did not answer within %.1f s", name, READY_CHECK_TIMEOUT)
        return "timeout"
    except Exception as error:  # Whatever broke, the part is not ready; the log says why.
        logger.warning("readyz: the %s check failed: %r", name, error)
        return "error"
    return "ok"


async def _check_database() -> None:
    await asyncio.get_running_loop().run_in_executor(_database_threads, _query_database)


def _query_database() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # CONN_MAX_AGE is 0 under ASGI: hand the connection back (to the pool, or closed).
        connection.close()


async def _check_channel_layer() -> None:
    """Carry one message through a throwaway group, as a push travels: group_add, group_send, receive."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    token = uuid.uuid4().hex
    # A channel of this process made by the layer, as a socket's is: the pub/sub layer adds
    # only such channels to groups.
    channel, group = await layer.new_channel("readyz."), f"readyz-{token}"
    try:
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "readyz.ping", "token": token})
        message = await layer.receive(channel)
        if message.get("token") != token:
            raise RuntimeError("the channel layer returned another message")
        # Not in the `finally`: after a failure or a timeout this could hang too.
        await layer.group_discard(group, channel)
    finally:
        _drop_channel(layer, channel)


def _drop_channel(layer, channel: str) -> None:
    """Let the layer forget the probe's channel, or each probe would leave its queue behind.

    Layers drop a channel when a receive on it is cancelled (that is how a socket's channel
    ends); nothing is awaited here, so a timed-out probe cannot hang on it.
    """
    receiving = asyncio.ensure_future(layer.receive(channel))
    receiving.add_done_callback(lambda task: task.cancelled() or task.exception())
    asyncio.get_running_loop().call_soon(receiving.cancel)

"""Django's and django-csp's middleware, with the hooks that do no I/O run on the event loop.

Under ASGI, Django runs every process_request and process_response of a MiddlewareMixin
middleware through sync_to_async: a hop to the request's thread and back for each, 16 per
request with this project's list (plus the view's own). Most of those hooks only read or set
headers and cookies; each hop costs more than the hook, and under load every hop also waits
its turn on the busy event loop: a catalog page read during a storm of checkouts waited for
the loop sixteen times. Seven of those hops are gone here.

Here the hooks that touch neither the database nor the disk run inline. Those that may,
stay in the thread: the session's save (SessionMiddleware.process_response) and the
messages' (MessageMiddleware.process_response writes them into the session, which may load
it). Django's security, CSRF and clickjacking middleware are left as they are: `manage.py
check --deploy` finds them by name, and without those names it skips its HTTPS, HSTS, cookie
and framing checks.

Under WSGI (Django's sync test client) nothing changes: __call__ is Django's. `manage.py
runserver` serves ASGI here (daphne is an installed app), so it runs these hooks on the loop too.
"""

from asgiref.sync import sync_to_async
from csp.middleware import CSPMiddleware as _CSPMiddleware
from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.middleware.common import CommonMiddleware as _CommonMiddleware


class HooksOnTheLoop:
    """Mix into a MiddlewareMixin subclass: run the hooks named in `on_the_loop` without a thread hop.

    Only for hooks that never block: no database, no file, no network.
    """

    on_the_loop: frozenset[str] = frozenset({"process_request", "process_response"})

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = await self._run_hook("process_request", request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = await self._run_hook("process_response", request, response)
        return response

    async def _run_hook(self, name: str, *args):
        hook = getattr(self, name)
        if name in self.on_the_loop:
            return hook(*args)
        return await sync_to_async(hook, thread_sensitive=True)(*args)


class CSPMiddleware(HooksOnTheLoop, _CSPMiddleware):
    pass


class SessionMiddleware(HooksOnTheLoop, _SessionMiddleware):
    # The request's session is loaded lazily (no query here); saving it is a query.
    on_the_loop = frozenset({"process_request"})


class CommonMiddleware(HooksOnTheLoop, _CommonMiddleware):
    pass


class AuthenticationMiddleware(HooksOnTheLoop, _AuthenticationMiddleware):
    # request.user is lazy: the user is read where it is first used, in the view's thread.
    pass


class MessageMiddleware(HooksOnTheLoop, _MessageMiddleware):
    on_the_loop = frozenset({"process_request"})

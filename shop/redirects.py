"""Where a `next` parameter may send the browser."""

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def local_redirect_target(request: HttpRequest, target: str, *, fallback: str) -> str:
    """Return `target` if it is a path on this site, else `fallback` (a URL, not a URL name).

    Only a path is accepted ("/cart/"): anything else ("foo", another host, a scheme)
    falls back, rather than being resolved as a view name and failing after the change it
    follows was already saved.
    """
    if (
        target.startswith("/")
        and not target.startswith("//")
        and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        return target
    return fallback

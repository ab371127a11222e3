"""Authentication backends."""

from axes.backends import AxesStandaloneBackend


class RateLimitedLoginBackend(AxesStandaloneBackend):
    """Refuse logins while the username or the client address is locked out (django-axes).

    axes refuses authenticate() calls that carry no request. Every login a browser can reach
    (the shop's, the admin's) passes its request; a call without one comes from code on the
    server (a shell, the test client's login()), where there is no client to rate-limit, so it
    is left to the next backend instead of failing.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

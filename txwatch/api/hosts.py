"""Who may talk to a collector that listens on loopback without a token: this machine's own clients only.

Without a token, being on loopback is the only protection, and a browser on the same machine is on loopback
too: any page it visits could POST runs to 127.0.0.1 (a cross-site ``text/plain`` POST needs no preflight), and a
page served from a name that re-resolves to 127.0.0.1 (DNS rebinding) could read them as same-origin. So on that
default, a request must be addressed to this machine (``Host``: localhost, 127.0.0.1, [::1], or the host of
``public_url``) and, when a browser says where it comes from (``Origin``), come from such an address too. With a
token, or off loopback (where a token is required), the token does this job and nothing here applies.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from txwatch.api import errors

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(value: str) -> str:
    """The host part of a ``Host`` header or an origin, lowercased, without port or brackets ('' if unparseable)."""
    try:
        return (urlsplit(value if "//" in value else "//" + value).hostname or "").lower()
    except ValueError:
        return ""


def _is_local(name: str, extra: frozenset[str]) -> bool:
    if name in LOCAL_NAMES or name in extra or name.endswith(".localhost"):
        return True
    try:  # an address, never a name that merely starts like one (127.0.0.1.evil.example)
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LocalOnly:
    """ASGI middleware refusing (403) requests addressed to another name, or sent from another site's page."""

    def __init__(self, app, public_url: str | None = None):
        self.app = app
        self.extra = frozenset({_hostname(public_url)} - {""}) if public_url else frozenset()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers", ()))
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin")
            problem = None
            if host and not _is_local(_hostname(host), self.extra):
                problem = (f"this collector listens on loopback without a token and answers only requests addressed "
                           f"to this machine (localhost, 127.0.0.1), not to {_hostname(host)[:100]!r}: set "
                           "TXWATCH_PUBLIC_URL to the name you use, or a token")
            elif origin is not None and not _is_local(_hostname(origin.decode("latin-1")), self.extra):
                problem = ("cross-site request refused: a page from another site may not use a collector that "
                           "listens on loopback without a token")
            if problem is not None:
                await errors.error_response(403, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

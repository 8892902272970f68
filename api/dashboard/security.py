"""Response headers for every ``/dashboard`` response, and the same-origin check for actions.

A pure ASGI middleware (not ``BaseHTTPMiddleware``) that touches only ``/dashboard`` paths, so
the JSON API's responses and speed are unchanged.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/dashboard"
STATIC_PREFIX = "/dashboard/static/"

# No inline script or style anywhere: htmx is a file, its settings are a <meta> tag, the charts
# use SVG presentation attributes and CSS classes.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


class DashboardHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if not static:
                    # Pages show tenants' data: never kept by the browser or a proxy.
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def same_origin(request: Request) -> bool:
    """True only when the request carries an ``Origin`` equal to this server's. A missing
    Origin fails too (fail closed): every browser sends it on POST."""
    origin = request.headers.get("origin")
    return origin is not None and origin == own_origin(request)

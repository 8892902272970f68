"""Request-body caps, enforced before and while the body is read.

Starlette has no body limit of its own, and ``Content-Length`` can be absent (chunked) or wrong,
so the cap is checked twice: on the header before anything is read, and on the bytes actually
received. Uploads get ``max_upload_bytes`` plus room for the multipart envelope; every other
route takes small JSON bodies.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

JSON_BODY_MAX_BYTES = 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the small form fields
UPLOAD_PATH = "/v1/files"


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's own body reading lets it through unchanged; the app's
    HTTPException handler renders it as a 413 envelope."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the limit of {limit:,} bytes.")


def body_limit(scope: Scope, max_upload_bytes: int) -> int:
    if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
        return max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    return JSON_BODY_MAX_BYTES


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope, self.max_upload_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = error_response(
                        413, BodyTooLarge(limit).detail, code="request_too_large"
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route while it reads; the app's handler answers.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)

"""Request bodies that could not be stored and read back are refused before any route runs.

JSON allows ``"\\ud800"``; Python decodes it to a lone surrogate, which is not text any response
can carry. Stored in a job's ``metadata`` it made the create, and every later get, list and cancel
of that tenant (and the provider's ``GET /admin/jobs``), answer 500. Deep nesting is refused for
the same reason: a bounded cost for every reader. So every JSON body is checked here, on every
route, before it is parsed into a model (``core.jsontext``):

* a lone surrogate in any key or string -> 400 ``invalid_unicode`` naming the field;
* more than ``FTAAS_MAX_JSON_DEPTH`` levels of nesting -> 400 ``json_too_deep``.

Cheap for ordinary requests: the body is walked only when it holds a ``\\uD800``-``\\uDFFF``
escape or more brackets than the depth limit. Uploads (multipart) are checked line by line by
the upload validator instead.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.limits import BodyTooLarge
from core.jsontext import JsonProblem, find_problem

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def body_problem(body: bytes, *, max_depth: int) -> JsonProblem | None:
    """The first problem of a JSON body, or None (also when it is not JSON: the route says so)."""
    escaped = _SURROGATE_ESCAPE.search(body) is not None
    if not escaped and body.count(b"[") + body.count(b"{") <= max_depth:
        return None
    try:
        value = json.loads(body)
    except RecursionError:
        return JsonProblem(
            "json_too_deep", None, f"JSON is nested more than {max_depth} levels deep"
        )
    except ValueError:
        return None
    return find_problem(value, max_depth=max_depth, check_text=escaped)


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


class JsonGuard:
    """ASGI middleware; install it inside ``BodySizeLimit`` so bodies arrive already capped."""

    def __init__(self, app: ASGIApp, *, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        last: Message | None = None
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    last = message  # the client left: the app sees it after the body
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except BodyTooLarge as exc:
            response = error_response(413, str(exc.detail), code="request_too_large")
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        problem = body_problem(body, max_depth=self.max_depth)
        if problem is not None:
            text = problem.message[0].upper() + problem.message[1:] + "."
            response = error_response(400, text, param=problem.path, code=problem.code)
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            if last is not None:
                return last
            return await receive()

        await self.app(scope, replay, send)

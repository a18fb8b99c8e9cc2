"""ASGI middleware that refuses request bodies past a byte limit while they stream in."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            # Refuse at once when the client says up front that the body is too big.
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                error = _too_large(limit)
                response = JSONResponse(error.body.model_dump(), status_code=error.status_code)
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            # Raised inside the endpoint, so the app's error handlers turn it into a JSON 413.
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"Request body is larger than the limit of {limit} bytes."
    )

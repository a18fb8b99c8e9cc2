"""ASGI middleware that refuses request bodies past a byte limit while they stream in, and
uploads past a number in flight at once: multipart parts spill to ``/tmp``, which is finite."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError, error_response

UPLOADS_BUSY_RETRY_AFTER_S = 2


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_concurrent_uploads: int | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrent_uploads = max_concurrent_uploads
        self.uploads_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        upload = False
        for name, value in scope["headers"]:
            # Refuse at once when the client says up front that the body is too big.
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(_too_large(limit), scope, receive, send)
                return
            upload = upload or (name == b"content-type" and value.startswith(b"multipart/"))
        if not upload:
            await self._limited(scope, receive, send)
            return
        if self.max_concurrent_uploads is not None:
            if self.uploads_in_flight >= self.max_concurrent_uploads:
                await _refuse(_busy(self.max_concurrent_uploads), scope, receive, send)
                return
        self.uploads_in_flight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.uploads_in_flight -= 1

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
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


async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(scope["path"], error.status_code, error.body, error.headers)
    await response(scope, receive, send)


def _busy(uploads: int) -> ApiError:
    return ApiError(
        503,
        "uploads_busy",
        f"This gateway is receiving {uploads} uploads already, its limit; nothing was queued. "
        f"Retry in {UPLOADS_BUSY_RETRY_AFTER_S} s.",
        headers={"Retry-After": str(UPLOADS_BUSY_RETRY_AFTER_S)},
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"Request body is larger than the limit of {limit} bytes."
    )

"""Who a request acts for: its API key, resolved to a tenant before any route runs.

``DARKROOM_AUTH=keys``: every path but the open ones (health, docs, ``/ui``, local
``/output``) needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a missing or unknown
key is a 401. A GET of one job's status or events may
instead carry that job's read-only token as ``?token=`` (``gateway.job_tokens``). ``off``: no key
is read and every request acts for the tenant ``local``. Routes read
the tenant with :func:`tenant_of`; a job of another tenant is a 404, like an unknown one.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from common.addresses import is_loopback
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT
from common.schemas import JobRecord
from common.tenants import LOCAL, AuthMode, Tenant
from gateway.errors import ApiError, handle_api_error, handle_redis_unavailable
from gateway.job_tokens import QUERY_PARAM, job_of_read_route
from gateway.settings import GatewaySettings

log = get_logger(__name__)

OPEN_PATHS = frozenset({"/", "/docs", "/redoc", "/openapi.json", "/ui"})
OPEN_PREFIXES = ("/docs/", "/ui/")
OUTPUT_PREFIX = "/output/"
CHALLENGE = 'Bearer realm="darkroom"'
_STATE_KEY = "tenant"


def unauthorized(message: str, *, invalid_key: bool = False) -> ApiError:
    # RFC 6750: a key was sent but is not valid -> error="invalid_token"; none sent -> no error.
    challenge = CHALLENGE + (', error="invalid_token"' if invalid_key else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


MISSING_KEY = (
    "This route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
    "(an admin creates keys with 'darkroom keys create --name NAME')."
)
UNKNOWN_KEY = "The API key is unknown or has been revoked."
BAD_JOB_TOKEN = "The job token does not belong to this job."
# Who a job token's holder acts as, in logs; it owns nothing.
JOB_TOKEN_HOLDER = "job-token"


def is_open(path: str, *, local_output: bool) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return local_output and path.startswith(OUTPUT_PREFIX)


def key_from_headers(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key") or None


class AuthMiddleware:
    """Resolves the request's tenant into its scope, or answers 401 itself (this runs outside
    the app's exception handlers, so it renders its own errors)."""

    def __init__(self, app: ASGIApp, *, mode: AuthMode, local_output: bool) -> None:
        self.app = app
        self.mode = mode
        self.local_output = local_output

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.mode == "off":
            if scope["type"] == "http":
                scope.setdefault("state", {})[_STATE_KEY] = LOCAL
            await self.app(scope, receive, send)
            return
        if is_open(scope["path"], local_output=self.local_output):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = await self._resolve(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _resolve(self, request: Request) -> Response | None:
        """``None`` once the tenant is in the scope; else the error to answer with."""
        key = key_from_headers(request)
        if key is None:
            return await self._resolve_job_token(request)
        tenants = request.app.state.services.tenants
        try:
            tenant: Tenant | None = await tenants.verify(key)
        except REDIS_TRANSIENT as exc:
            return await handle_redis_unavailable(request, exc)
        if tenant is None:
            log.info("auth.rejected", path=request.url.path, reason="unknown_key")
            return await handle_api_error(request, unauthorized(UNKNOWN_KEY, invalid_key=True))
        request.scope.setdefault("state", {})[_STATE_KEY] = tenant
        # Each request runs in its own context: every log line it writes names its tenant.
        structlog.contextvars.bind_contextvars(tenant=tenant.name)
        return None

    async def _resolve_job_token(self, request: Request) -> Response | None:
        """No key: a GET of a job's status or events may carry that job's read-only token."""
        token = request.query_params.get(QUERY_PARAM)
        job_id = job_of_read_route(request.url.path)
        if token is None or job_id is None or request.method not in ("GET", "HEAD"):
            return await handle_api_error(request, unauthorized(MISSING_KEY))
        try:
            valid = await request.app.state.services.job_tokens.valid(job_id, token)
        except REDIS_TRANSIENT as exc:
            return await handle_redis_unavailable(request, exc)
        if not valid:
            log.info("auth.rejected", path=request.url.path, reason="bad_job_token")
            return await handle_api_error(request, unauthorized(BAD_JOB_TOKEN, invalid_key=True))
        holder = Tenant(name=JOB_TOKEN_HOLDER, job_id=job_id)
        request.scope.setdefault("state", {})[_STATE_KEY] = holder
        structlog.contextvars.bind_contextvars(tenant=JOB_TOKEN_HOLDER)
        return None


def tenant_of(request: Request) -> Tenant:
    """The tenant the middleware resolved; only routes behind it may ask."""
    tenant: Tenant = request.scope["state"][_STATE_KEY]
    return tenant


def may_see(tenant: Tenant, record: JobRecord) -> bool:
    if tenant.job_id is not None:
        return record.job_id == tenant.job_id
    return tenant.admin or record.tenant == tenant.name


def may_see_batch(tenant: Tenant, owner: str) -> bool:
    """A batch of ``owner``'s: like its jobs, but never through a job token (it opens one job)."""
    if tenant.job_id is not None:
        return False
    return tenant.admin or owner == tenant.name


def require_admin(request: Request) -> Tenant:
    tenant = tenant_of(request)
    if not tenant.admin:
        raise ApiError(403, "forbidden", "This route needs an admin key.")
    return tenant


def warn_if_open(settings: GatewaySettings) -> None:
    """Auth off is for one machine; on a network address anyone who reaches it may submit."""
    if settings.auth == "off" and not is_loopback(settings.host):
        log.warning(
            "auth.off_on_network",
            host=settings.host,
            message="DARKROOM_AUTH=off on a non-loopback address: anyone who can reach this "
            "port can submit, read and cancel every job. Set DARKROOM_AUTH=keys.",
        )

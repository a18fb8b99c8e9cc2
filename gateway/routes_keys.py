"""API keys over HTTP for admin keys: ``POST /v1/keys``, ``GET /v1/keys``,
``DELETE /v1/keys/{name}``, and a tenant's webhook secret (``POST
/v1/keys/{name}/webhook-secret``, ``.../rotate``). Mounted only with ``DARKROOM_AUTH=keys`` (else
they are 404)."""

from __future__ import annotations

from pydantic import RootModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.logging import get_logger
from common.schemas import ErrorResponse
from common.tenants import (
    CreatedKey,
    CreateKeyRequest,
    KeyInfo,
    NameTaken,
    ReservedName,
    RevokedKey,
    WebhookSecret,
)
from gateway.auth import require_admin
from gateway.bodies import read_json
from gateway.errors import ApiError, field_error
from gateway.openapi import operation
from gateway.services import services

log = get_logger(__name__)


class KeyList(RootModel[list[KeyInfo]]):
    """Every API key by name: admin or not, created, last used. Never the key itself."""


@operation(
    summary="Create an API key (admin)",
    tag="keys",
    json_body=CreateKeyRequest,
    responses={201: CreatedKey, 409: ErrorResponse},
    admin=True,
    description="The key is in the answer only: Redis keeps its SHA-256. A key's name is its "
    "tenant: the jobs it submits belong to that name. Limits left out take the server's "
    "defaults for new keys (`DARKROOM_KEY_DEFAULT_*`); `null` means no limit. The answer "
    "shows the limits the key got.",
)
async def create_key(request: Request) -> JSONResponse:
    admin = require_admin(request)
    svc = services(request)
    body = await read_json(request, CreateKeyRequest, max_bytes=svc.settings.max_json_bytes)
    try:
        created = await svc.tenants.create(body)
    except ReservedName as exc:
        raise field_error("name", str(exc)) from None
    except NameTaken as exc:
        raise ApiError(409, "key_exists", f"{exc}.") from None
    log.info(
        "key.created",
        name=created.name,
        admin=created.admin,
        by=admin.name,
        rate_per_min=created.rate_per_min,
        max_queued=created.max_queued,
        max_priority=created.max_priority,
        max_cost=created.max_cost,
    )
    return JSONResponse(created.model_dump(mode="json"), status_code=201)


@operation(summary="List the API keys (admin)", tag="keys", responses={200: KeyList}, admin=True)
async def list_keys(request: Request) -> JSONResponse:
    require_admin(request)
    found = await services(request).tenants.list()
    return JSONResponse(KeyList(found).model_dump(mode="json"))


@operation(
    summary="Revoke an API key (admin)",
    tag="keys",
    responses={200: RevokedKey},
    admin=True,
    description="Requests with the key get 401 at once, on every replica. Its jobs stay.",
)
async def revoke_key(request: Request) -> JSONResponse:
    admin = require_admin(request)
    name = request.path_params["name"]
    if not await services(request).tenants.revoke(name):
        raise ApiError(404, "not_found", f"No API key named {name!r}.")
    log.info("key.revoked", name=name, by=admin.name)
    return JSONResponse(RevokedKey(name=name).model_dump())


async def _webhook_secret(request: Request, *, rotate: bool) -> JSONResponse:
    admin = require_admin(request)
    name = request.path_params["name"]
    secret = await services(request).tenants.webhook_secret(name, rotate=rotate)
    if secret is None:
        raise ApiError(404, "not_found", f"No API key named {name!r}.")
    # Never the secret itself in a log line.
    log.info("key.webhook_secret", name=name, rotated=rotate, by=admin.name)
    return JSONResponse(secret.model_dump(mode="json"))


@operation(
    summary="A tenant's webhook signing secret (admin)",
    tag="keys",
    responses={200: WebhookSecret},
    admin=True,
    description="Made on first ask, the same afterwards. Standard Webhooks form: `whsec_` and "
    "the base64 of 24 random bytes. Webhooks to this tenant are signed with it.",
)
async def webhook_secret(request: Request) -> JSONResponse:
    return await _webhook_secret(request, rotate=False)


@operation(
    summary="Rotate a tenant's webhook signing secret (admin)",
    tag="keys",
    responses={200: WebhookSecret},
    admin=True,
    description="A new secret from now on; the previous one stays valid until "
    "`previous_valid_until` (`DARKROOM_WEBHOOK_SECRET_GRACE_S` after the rotation), so "
    "receivers can switch without missing a delivery.",
)
async def rotate_webhook_secret(request: Request) -> JSONResponse:
    return await _webhook_secret(request, rotate=True)


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{name}", revoke_key, methods=["DELETE"]),
    Route("/v1/keys/{name}/webhook-secret", webhook_secret, methods=["POST"]),
    Route("/v1/keys/{name}/webhook-secret/rotate", rotate_webhook_secret, methods=["POST"]),
]

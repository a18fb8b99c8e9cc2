"""``GET /v1/usage``: what a tenant's finished jobs took, per UTC day (``common.usage``).

A key reads its own tenant's usage; an admin key may name any tenant. With auth off everything
is the tenant ``local``'s.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.schemas import ErrorResponse
from common.tenants import TenantName
from common.usage import UsageReport, today
from gateway.auth import tenant_of
from gateway.errors import ApiError, field_error, from_validation
from gateway.openapi import operation
from gateway.services import services

# Without ``from``: the 30 days ending on ``to`` (today by default), as billing pages show.
DEFAULT_DAYS = 30
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_day(value: object) -> object:
    # Only YYYY-MM-DD: pydantic would also take a Unix time, which nobody means here.
    if isinstance(value, str) and not _DAY.match(value):
        raise ValueError("a UTC day as YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(_iso_day)]


class UsageQuery(BaseModel):
    """``GET /v1/usage``'s query parameters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Day | SkipJsonSchema[None] = Field(
        default=None,
        alias="from",
        description="First UTC day (YYYY-MM-DD), included. Default: 29 days before `to`.",
    )
    to: Day | SkipJsonSchema[None] = Field(
        default=None, description="Last UTC day (YYYY-MM-DD), included. Default: today (UTC)."
    )
    tenant: TenantName | SkipJsonSchema[None] = Field(
        default=None, description="Whose usage: an admin key may name any tenant. Default: yours."
    )


@operation(
    summary="Usage per UTC day: jobs, GPU-seconds, output bytes",
    tag="usage",
    query=UsageQuery,
    responses={200: UsageReport, 403: ErrorResponse},
    description="Every job counts once, on the UTC day it finished (completed, failed or "
    "canceled), under the tenant that submitted it. Without parameters: your last 30 days, "
    "today included. A key reads its own tenant's usage; naming another tenant needs an "
    "admin key (403 otherwise). Usage is kept for DARKROOM_USAGE_RETENTION_DAYS (400 by "
    "default); a range may span that many days at most.",
)
async def get_usage(request: Request) -> JSONResponse:
    caller = tenant_of(request)
    svc = services(request)
    try:
        query = UsageQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise from_validation(exc) from None
    name = query.tenant or caller.name
    if name != caller.name and not caller.admin:
        raise ApiError(403, "forbidden", "Only an admin key may read another tenant's usage.")
    last = query.to or today()
    first = query.from_ or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise field_error("from", f"{first} is after {last} (to)")
    span_days = (last - first).days + 1
    limit_days = svc.settings.usage_retention_days
    if span_days > limit_days:
        raise field_error(
            "from", f"the range spans {span_days} days; usage is kept for {limit_days}"
        )
    report = await svc.usage.read(name, first, last)
    return JSONResponse(report.model_dump(mode="json", by_alias=True))


routes = [Route("/v1/usage", get_usage, methods=["GET"])]

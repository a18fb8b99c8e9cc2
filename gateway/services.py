"""What the HTTP layer needs at hand, built once per process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.requests import Request

from common.batches import BatchStore
from common.catalog import Catalog
from common.jobs import JobStore
from common.keys import Keys
from common.previews import PreviewStore
from common.tenants import TenantStore
from common.usage import UsageStore
from gateway.fanout import EventFanout
from gateway.feed import FeedLimit
from gateway.job_tokens import JobTokens
from gateway.quotas import RateLimiter
from gateway.settings import GatewaySettings
from gateway.submit import Submitter


@dataclass
class Services:
    settings: GatewaySettings
    redis: Redis
    catalog: Catalog
    jobs: JobStore
    submitter: Submitter
    fanout: EventFanout
    feeds: FeedLimit
    keys: Keys
    tenants: TenantStore
    job_tokens: JobTokens
    rate: RateLimiter
    usage: UsageStore
    batches: BatchStore
    previews: PreviewStore


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found

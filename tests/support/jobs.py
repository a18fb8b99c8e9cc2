"""Jobs written straight to Redis through ``JobStore``, for tests of what reads them."""

from __future__ import annotations

import uuid

from common.jobs import JobStore, TenantQuota
from common.keys import Keys
from common.schemas import JobSpec, RenderParams, Task, Webhook, utcnow
from common.tenants import LOCAL_TENANT


async def submit_job(
    store: JobStore,
    keys: Keys,
    image: bytes | None = None,
    *,
    deadline_at: float | None = None,
    blob_ttl_s: int = 60,
    max_input_bytes: int | None = None,
    tenant: str = LOCAL_TENANT,
    quota: TenantQuota | None = None,
    webhook: Webhook | None = None,
) -> JobSpec:
    """A small sd job (i2i when ``image`` is given), queued as the gateway would queue it."""
    job_id = str(uuid.uuid4())
    spec = JobSpec(
        job_id=job_id,
        model="sd",
        task=Task.I2I if image else Task.T2I,
        created_at=utcnow(),
        params=RenderParams(
            prompt="p",
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=1.0,
            seed=9,
            strength=0.5 if image else None,
        ),
        input_blob=keys.input_blob(job_id) if image else None,
        deadline_at=deadline_at,
        tenant=tenant,
    )
    await store.submit(
        spec,
        message="queued",
        input_bytes=image,
        blob_ttl_s=blob_ttl_s,
        max_input_bytes=max_input_bytes,
        quota=quota,
        webhook=webhook,
    )
    return spec

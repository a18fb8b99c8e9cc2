"""Uploader settings: where results are stored and how their URLs are formed."""

from __future__ import annotations

from pydantic import Field, model_validator

from common.settings import ConsumerSettings, seed_alias

# S3 objects may be removed by a lifecycle rule Darkroom cannot see: cached entries pointing at
# them expire after a day unless DARKROOM_RESULT_CACHE_TTL_S says otherwise.
DEFAULT_S3_RESULT_CACHE_TTL_S = 24 * 3600


class UploaderSettings(ConsumerSettings):
    aws_access_key_id: str | None = Field(
        default=None, validation_alias=seed_alias("AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: str | None = Field(
        default=None, validation_alias=seed_alias("AWS_SECRET_ACCESS_KEY")
    )
    aws_region: str = Field(default="us-east-1", validation_alias=seed_alias("AWS_REGION"))
    s3_bucket_name: str = Field(
        default="image-generation-outputs", validation_alias=seed_alias("S3_BUCKET_NAME")
    )
    # Any S3-compatible endpoint (MinIO, SeaweedFS, R2…); unset means AWS.
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=seed_alias("S3_ENDPOINT_URL")
    )
    # URLs handed to clients: presigned GETs, or this base (a CDN or public bucket) + key.
    s3_presign: bool = False
    s3_presign_expires_s: int = Field(default=7 * 24 * 3600, ge=1, le=7 * 24 * 3600)
    s3_public_base_url: str | None = None
    s3_create_bucket: bool = False

    claim_idle_ms: int = Field(default=30_000, ge=1000)
    # Uploads in flight at once: one slow PUT holds one slot, not the jobs behind it.
    upload_concurrency: int = Field(default=8, ge=1)
    # How long a finished result stays in the result cache: keep it below the life of the
    # stored objects (an S3 lifecycle rule). Unset: local storage keeps entries until deleted
    # (the gateway drops one whose file is gone), S3 keeps them DEFAULT_S3_RESULT_CACHE_TTL_S.
    result_cache_ttl_s: int | None = Field(default=None, ge=1)

    @property
    def result_cache_ttl(self) -> int | None:
        if self.result_cache_ttl_s is not None or self.storage == "local":
            return self.result_cache_ttl_s
        return DEFAULT_S3_RESULT_CACHE_TTL_S

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> UploaderSettings:
        if self.storage == "s3" and not self.s3_bucket_name:
            raise ValueError("S3_BUCKET_NAME is required when DARKROOM_STORAGE=s3")
        return self

"""GPU worker settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.settings import ConsumerSettings


class WorkerSettings(ConsumerSettings):
    # The model routes this worker serves (comma-separated); empty means every route in the
    # catalogue. Splitting routes across deployments splits GPU pools by model.
    routes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    # Load every served pipeline at start-up (production) or on first use.
    preload: bool = True
    # Resident weights past this are unloaded least-recently-used first; unset: no limit.
    model_memory_budget_mb: int | None = Field(default=None, ge=1)
    # CPU threads for torch; unset leaves torch's default.
    torch_threads: int | None = Field(default=None, ge=1)
    # Test aid, never for production: the render thread blocks for good after this denoising
    # step, as in a CUDA call that never returns (tests/e2e/test_worker_failures.py).
    test_hang_at_step: int | None = Field(default=None, ge=1)
    # Test aid, never for production: every denoising step takes at least this much longer, so
    # a tiny render lasts long enough to watch (tests/e2e/test_previews.py).
    test_step_delay_s: float | None = Field(default=None, gt=0, le=10)

    @field_validator("routes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

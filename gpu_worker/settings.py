"""GPU worker settings."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.settings import CommonSettings


class WorkerSettings(CommonSettings):
    # The model routes this worker serves (comma-separated); empty means every route in the
    # catalogue. Splitting routes across deployments splits GPU pools by model.
    routes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    # Load every served pipeline at start-up (production) or on first use.
    preload: bool = True
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    block_ms: int = Field(default=2000, ge=1)
    # A job pending this long on a silent worker is taken over by another.
    claim_idle_ms: int = Field(default=60_000, ge=1000)
    # Resident weights past this are unloaded least-recently-used first; unset: no limit.
    model_memory_budget_mb: int | None = Field(default=None, ge=1)
    # CPU threads for torch; unset leaves torch's default.
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("routes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

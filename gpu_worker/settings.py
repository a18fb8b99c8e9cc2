"""GPU worker settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.addresses import is_loopback
from common.cpus import can_pin, format_cpu_list, machine_cpus, parse_cpu_list
from common.settings import ConsumerSettings, seed_alias

# Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class WorkerSettings(ConsumerSettings):
    # The model routes this worker serves (comma-separated); empty means every route in the
    # catalogue. Splitting routes across deployments splits GPU pools by model.
    routes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    # Load every served pipeline at start-up (production) or on first use.
    preload: bool = True
    # Resident weights past this are unloaded least-recently-used first; unset: no limit.
    model_memory_budget_mb: int | None = Field(default=None, ge=1)
    # CPU threads for torch; unset leaves torch's default (one per render CPU when those are set).
    torch_threads: int | None = Field(default=None, ge=1)
    # Cores the worker has to itself (its render thread, the operator threads torch starts from
    # it, and the loop that feeds it), as Linux writes them (`0-3,6`); empty: the kernel places
    # them. `darkroom up` sets it when the machine has cores to split between the worker and the
    # other services (common/cpus.py).
    render_cpus: Annotated[frozenset[int], NoDecode] = Field(default_factory=frozenset)
    # Test aid, never for production: the render thread blocks for good after this denoising
    # step, as in a CUDA call that never returns (tests/e2e/test_worker_failures.py).
    test_hang_at_step: int | None = Field(default=None, ge=1)
    # Test aid, never for production: every denoising step takes at least this much longer, so
    # a tiny render lasts long enough to watch (tests/e2e/test_previews.py).
    test_step_delay_s: float | None = Field(default=None, gt=0, le=10)

    # Scale-in: the worker marks its own pod busy or idle (controller.kubernetes.io/
    # pod-deletion-cost), so a Deployment scaling in removes idle workers first. It acts only
    # inside a pod (POD_NAME and POD_NAMESPACE from the downward API, a ServiceAccount token).
    pod_deletion_cost: bool = True
    # The annotation is patched at most this often (the latest value wins).
    pod_deletion_cost_interval_s: float = Field(default=5.0, ge=0)
    pod_name: str | None = Field(default=None, validation_alias=seed_alias("POD_NAME"))
    pod_namespace: str | None = Field(default=None, validation_alias=seed_alias("POD_NAMESPACE"))
    # Set by the kubelet in every pod; the API server's in-cluster address.
    kubernetes_service_host: str | None = Field(
        default=None, validation_alias=seed_alias("KUBERNETES_SERVICE_HOST")
    )
    kubernetes_service_port: int = Field(
        default=443, validation_alias=seed_alias("KUBERNETES_SERVICE_PORT")
    )
    # The API server's base URL; unset: https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT.
    # https, or http to a loopback address only (a test's stand-in).
    kubernetes_api_url: str | None = None
    kubernetes_token_file: Path = SERVICE_ACCOUNT_DIR / "token"
    kubernetes_ca_file: Path = SERVICE_ACCOUNT_DIR / "ca.crt"

    @field_validator("routes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("render_cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: object) -> object:
        return parse_cpu_list(value) if isinstance(value, str) else value

    @field_validator("render_cpus")
    @classmethod
    def _available(cls, value: frozenset[int]) -> frozenset[int]:
        if value and not can_pin():
            raise ValueError("pinning the worker to CPUs needs Linux (sched_setaffinity)")
        # The machine's, not this process's: it may have started on other cores. One it may not
        # use is refused when the worker pins itself (gpu_worker/main.py).
        if missing := value - machine_cpus():
            raise ValueError(
                f"CPUs {format_cpu_list(missing)} are not on this machine "
                f"(it has {format_cpu_list(machine_cpus())})"
            )
        return value

    @field_validator("kubernetes_api_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = urlsplit(value)
        if url.scheme == "https" and url.hostname:
            return value.rstrip("/")
        if url.scheme == "http" and url.hostname and is_loopback(url.hostname):
            return value.rstrip("/")
        raise ValueError(
            f"{value!r}: the API server is reached over https (http only to a loopback address)"
        )

    @property
    def kubernetes_api(self) -> str | None:
        """The API server's base URL, if this process knows one (inside a pod it does)."""
        if self.kubernetes_api_url:
            return self.kubernetes_api_url
        host = self.kubernetes_service_host
        if not host:
            return None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return f"https://{host}:{self.kubernetes_service_port}"

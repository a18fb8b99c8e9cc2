"""Scale-in prefers idle workers: the worker marks its own pod busy or idle.

When a Deployment scales in, its ReplicaSet removes the pods of lowest
``controller.kubernetes.io/pod-deletion-cost`` first (after pods that are not ready). A worker
sets it on its own pod: 0 when it holds no job, and while it holds some, their cost in
megapixel-steps rounded up to a power of two, so a worker in the middle of a long video outweighs
one finishing a few small images, and the value changes only when the work in hand doubles or
halves. It patches the annotation through the API server (a JSON merge patch) when the value
changes, at most every ``pod_deletion_cost_interval_s``, from a task of its own: the render and
the event loop never wait on it. A failure is logged and tried again later; this is an
optimisation, never a reason to stop serving. Outside a pod it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from common.consumer import sleep_unless
from common.logging import get_logger
from gpu_worker.settings import WorkerSettings

log = get_logger(__name__)

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
IDLE_COST = 0
# The annotation is an int32; 2**30 megapixel-steps is far past any job.
MAX_COST = 2**30
# Work in hand that shrank is noticed within this long (work taken in is noticed at once).
POLL_INTERVAL_S = 1.0
REQUEST_TIMEOUT_S = 5.0
MERGE_PATCH = "application/merge-patch+json"

WorkInHand = Callable[[], float]


def deletion_cost(work: float) -> int:
    """The pod's deletion cost for this much work in hand (megapixel-steps)."""
    if work <= 0:
        return IDLE_COST
    return min(MAX_COST, 1 << max(0, math.ceil(math.log2(work))))


class PodDeletionCost:
    """Keeps one pod's annotation in step with its worker's work in hand."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        namespace: str,
        pod: str,
        token_file: Path,
        interval_s: float,
    ) -> None:
        self._client = client
        self._path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
        self._token_file = token_file
        self._interval_s = interval_s
        self.sent: int | None = None  # the value the pod carries, as far as this worker knows
        self._failing = False

    async def run(
        self, done: asyncio.Event, work_in_hand: WorkInHand, changed: asyncio.Event
    ) -> None:
        """Until ``done``: patch on every change, at most every ``interval_s``. The first
        patch marks the pod idle, also after a restart of the container in a busy pod."""
        while not done.is_set():
            cost = deletion_cost(work_in_hand())
            if cost != self.sent:
                if await self.patch(cost):
                    self.sent = cost
                    await sleep_unless(done, self._interval_s)
                else:  # never a tight loop against an API server that refuses
                    await sleep_unless(done, max(self._interval_s, POLL_INTERVAL_S))
                continue
            changed.clear()
            waiters = [asyncio.create_task(changed.wait()), asyncio.create_task(done.wait())]
            await asyncio.wait(
                waiters, timeout=POLL_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()

    async def patch(self, cost: int) -> bool:
        """One merge patch of the annotation; ``False`` (logged) if it did not take."""
        try:
            # Read each time: the kubelet renews a projected token before it expires.
            token = (await asyncio.to_thread(self._token_file.read_text)).strip()
            response = await self._client.patch(
                self._path,
                json={"metadata": {"annotations": {ANNOTATION: str(cost)}}},
                headers={"Authorization": f"Bearer {token}", "Content-Type": MERGE_PATCH},
            )
            response.raise_for_status()
        except (OSError, httpx.HTTPError) as exc:
            # Once per run of failures: an API server that refuses keeps refusing.
            if not self._failing:
                log.warning("pod_cost.patch_failed", cost=cost, error=_describe(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("pod_cost.patch_recovered", cost=cost)
        self._failing = False
        log.debug("pod_cost.patched", cost=cost)
        return True


@contextlib.asynccontextmanager
async def pod_deletion_cost(
    settings: WorkerSettings, work_in_hand: WorkInHand, changed: asyncio.Event
) -> AsyncIterator[PodDeletionCost | None]:
    """Keep the pod's deletion cost while the block runs, where there is a pod to mark."""
    reason = _off_reason(settings)
    if reason is not None:
        log.info("pod_cost.off", reason=reason)
        yield None
        return
    assert settings.pod_namespace and settings.pod_name and settings.kubernetes_api
    verify: ssl.SSLContext | bool = True
    if settings.kubernetes_api.startswith("https:"):
        verify = await asyncio.to_thread(
            ssl.create_default_context, cafile=str(settings.kubernetes_ca_file)
        )
    async with httpx.AsyncClient(
        base_url=settings.kubernetes_api, verify=verify, timeout=REQUEST_TIMEOUT_S
    ) as client:
        marker = PodDeletionCost(
            client,
            namespace=settings.pod_namespace,
            pod=settings.pod_name,
            token_file=settings.kubernetes_token_file,
            interval_s=settings.pod_deletion_cost_interval_s,
        )
        log.info("pod_cost.on", pod=settings.pod_name, namespace=settings.pod_namespace)
        done = asyncio.Event()
        task = asyncio.create_task(marker.run(done, work_in_hand, changed), name="pod-cost")
        try:
            yield marker
        finally:
            done.set()  # a patch in flight ends within its timeout
            await task


def _off_reason(settings: WorkerSettings) -> str | None:
    if not settings.pod_deletion_cost:
        return "DARKROOM_POD_DELETION_COST=false"
    if not (settings.pod_name and settings.pod_namespace):
        return "not in a pod (POD_NAME and POD_NAMESPACE unset)"
    if settings.kubernetes_api is None:
        return "no API server (KUBERNETES_SERVICE_HOST unset)"
    needed = [settings.kubernetes_token_file]
    if settings.kubernetes_api.startswith("https:"):
        needed.append(settings.kubernetes_ca_file)
    for path in needed:
        if not path.is_file():
            return f"{path} is missing: mount the ServiceAccount token and CA"
    return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.text[:200]}"
    return f"{type(exc).__name__}: {exc}"

"""The Redis policy: AOF only, a Guaranteed pod with headroom past maxmemory, its own priority,
and a cap on the input images waiting in it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

from manifests import Build, Doc, cpu_millis, k8s_bytes, redis_bytes, role, where

REPO = Path(__file__).resolve().parents[2]

# maxmemory at most this share of Redis's memory limit: the rest is for the AOF rewrite child's
# copy-on-write pages, allocator fragmentation and client buffers.
MAX_REDIS_MEMORY_RATIO = 0.6
# Input images waiting in Redis may take at most this share of maxmemory (the rest: queued
# records, rendered outputs on their way to storage, finished records for TASK_TTL).
MAX_INPUT_SHARE = 0.5
DEFAULT_MAX_WAITING_INPUT_BYTES = 512 * 1024 * 1024


def check_redis(build: Build) -> Iterator[str]:
    """AOF only, maxmemory within its share of a Guaranteed pod, shutdown inside its grace."""
    redis = build.named("StatefulSet", "redis")
    if redis is None:
        return  # a managed Redis (REDIS_URL): its memory is the provider's
    pod = redis["spec"]["template"]["spec"]
    conf = _redis_conf(build, pod)
    lines = [line.split("#")[0].strip() for line in conf.splitlines()]
    directives = [shlex.split(line) for line in lines if line]
    saves = [d[1:] for d in directives if d[0] == "save"]
    if saves != [[""]]:
        yield f'{where(redis)}: redis.conf must say save "" (AOF only), not {saves}'
    if ["appendonly", "yes"] not in directives:
        yield f"{where(redis)}: redis.conf must say appendonly yes"
    if ["maxmemory-policy", "noeviction"] not in directives:
        yield f"{where(redis)}: redis.conf must say maxmemory-policy noeviction"
    timeouts = [float(d[1]) for d in directives if d[0] == "shutdown-timeout"]
    shutdown_s = timeouts[-1] if timeouts else 10.0
    grace_s = pod.get("terminationGracePeriodSeconds", 30)
    if grace_s < shutdown_s + 20:
        yield (
            f"{where(redis)}: terminationGracePeriodSeconds {grace_s} is not well past "
            f"shutdown-timeout {shutdown_s:g} s (20 s margin)"
        )
    container = pod["containers"][0]
    resources = container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for resource, parse in (("cpu", cpu_millis), ("memory", k8s_bytes)):
        if resource not in limits or parse(requests.get(resource, "0")) != parse(limits[resource]):
            yield f"{where(redis)}: {resource} requests must equal limits (Guaranteed QoS)"
    maxmemory = build.env(container).get("REDIS_MAXMEMORY")
    if not maxmemory or "memory" not in limits:
        yield f"{where(redis)}: needs REDIS_MAXMEMORY and a memory limit"
        return
    ratio = redis_bytes(maxmemory) / k8s_bytes(limits["memory"])
    if ratio > MAX_REDIS_MEMORY_RATIO:
        yield (
            f"{where(redis)}: maxmemory {maxmemory} is {ratio:.0%} of the memory limit "
            f"{limits['memory']}; at most {MAX_REDIS_MEMORY_RATIO:.0%}"
        )
    yield from _priority(build, redis, pod)
    yield from _waiting_inputs(build, redis_bytes(maxmemory))


def _redis_conf(build: Build, pod: Doc) -> str:
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            data = build.config_maps[volume["configMap"]["name"]].get("data", {})
            if "redis.conf" in data:
                return str(data["redis.conf"])
    return ""


def _priority(build: Build, redis: Doc, pod: Doc) -> Iterator[str]:
    name = pod.get("priorityClassName")
    if not name or build.named("PriorityClass", name) is None:
        yield f"{where(redis)}: needs a PriorityClass of this build (priorityClassName)"


def _waiting_inputs(build: Build, maxmemory_bytes: float) -> Iterator[str]:
    """The gateway's cap on input images, in Redis bytes, within its share of maxmemory."""
    measured = json.loads((REPO / "bench/results/redis_memory.json").read_text())["queued"]
    redis_per_byte = measured["bytes_per_queued_i2i_job"] / measured["input_image_bytes"]
    for doc, pod in build.pods():
        for container in pod["containers"]:
            if role(container) != "gateway":
                continue
            env = build.env(container)
            cap = int(
                env.get("DARKROOM_MAX_WAITING_INPUT_BYTES") or DEFAULT_MAX_WAITING_INPUT_BYTES
            )
            held = cap * redis_per_byte
            if held > maxmemory_bytes * MAX_INPUT_SHARE:
                yield (
                    f"{where(doc)}: DARKROOM_MAX_WAITING_INPUT_BYTES {cap} holds about "
                    f"{held / 2**20:.0f} MiB of Redis, over "
                    f"{MAX_INPUT_SHARE:.0%} of maxmemory"
                )

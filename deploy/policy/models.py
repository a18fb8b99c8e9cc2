"""The model cache policy: a shared claim with a storage class, filled by a prefetch Job that can
reach the hub; workers read weights from it offline and drain within their routes' render limits."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

from manifests import (
    Build,
    Doc,
    policies_for,
    role,
    rule_allows_port,
    template_labels,
    token_mounted,
    where,
)

from policy.network import KUBE_API_PORTS, MAX_KUBE_API_PREFIX, kube_api_rule

# Hub repositories that need a token of an account that accepted their licence.
GATED_HUB_IDS = {"black-forest-labs/FLUX.1-dev"}


def check_model_cache(build: Build) -> Iterator[str]:
    """A shared claim names its class; workers read weights offline from a prefetched cache."""
    for claim in build.of("PersistentVolumeClaim"):
        if "ReadWriteMany" in claim["spec"].get("accessModes", []) and not claim["spec"].get(
            "storageClassName"
        ):
            yield (
                f"{where(claim)}: ReadWriteMany needs a storageClassName (set "
                "MODEL_CACHE_STORAGE_CLASS in site.env): the clouds' "
                "default classes are ReadWriteOnce"
            )
    for doc, pod in build.pods():
        for container in pod["containers"]:
            if role(container) != "worker":
                continue
            if build.env(container).get("HF_HUB_OFFLINE") != "1":
                yield f"{where(doc)}: workers must run with HF_HUB_OFFLINE=1"
            yield from _worker_egress(build, doc)
            yield from _render_limits(build, doc, container)
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        if (
            doc["kind"] == "Deployment"
            and claims
            and any(role(c) == "worker" for c in pod["containers"])
        ):
            yield from _prefetch(build, doc, claims)


def _worker_egress(build: Build, doc: Doc) -> Iterator[str]:
    for policy in policies_for(build, template_labels(doc), "Egress"):
        for rule in policy["spec"].get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            to_pods_only = bool(rule.get("to")) and all(
                set(peer) == {"podSelector"} for peer in rule["to"]
            )
            if not to_pods_only and ports != {53} and not kube_api_rule(rule):
                yield (
                    f"{where(doc)}: NetworkPolicy/{policy['metadata']['name']} lets "
                    "workers out of the cluster: weights come from the "
                    "prefetched cache, and only the API server "
                    f"(an ipBlock of /{MAX_KUBE_API_PREFIX[4]} at most, "
                    f"ports {sorted(KUBE_API_PORTS)}) may be reached"
                )


def _render_limits(build: Build, doc: Doc, container: Doc) -> Iterator[str]:
    """A drain (SIGTERM) never cuts short a render its route allows: the pool's drain grace
    covers the max_render_s of every route it serves."""
    catalog = _catalog(build, doc)
    if catalog is None:
        return
    env = build.env(container)
    served = [r for r in (env.get("DARKROOM_ROUTES") or "").split(",") if r.strip()]
    grace_s = float(env.get("DARKROOM_DRAIN_GRACE_S") or 60)
    for name, route in catalog.routes.items():
        if served and name not in served:
            continue
        if route.max_render_s is not None and route.max_render_s > grace_s:
            yield (
                f"{where(doc)}: route {name}: max_render_s {route.max_render_s:g} is past the "
                f"drain grace of {grace_s:g} s (DARKROOM_DRAIN_GRACE_S)"
            )


def _prefetch(build: Build, worker: Doc, claims: set[str]) -> Iterator[str]:
    jobs = [
        (job, pod)
        for job, pod in build.pods()
        if job["kind"] == "Job"
        and claims
        & {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
    ]
    if not jobs:
        yield f"{where(worker)}: no Job fills its model cache {sorted(claims)}"
        return
    catalog = _catalog(build, worker)
    gated = {r.weights for r in catalog.routes.values()} & GATED_HUB_IDS if catalog else set()
    for job, pod in jobs:
        if not any(
            rule_allows_port(rule, 443)
            for policy in policies_for(build, template_labels(job), "Egress")
            for rule in policy["spec"].get("egress", [])
        ):
            yield f"{where(job)}: no NetworkPolicy lets it reach the hub (443)"
        if gated and not token_mounted(pod, build.env(pod["containers"][0])):
            yield (
                f"{where(job)}: {sorted(gated)} are gated: mount HF_TOKEN from a "
                "Secret that is not optional and set HF_TOKEN_PATH to it"
            )


def _catalog(build: Build, worker: Doc) -> Any:
    from common.catalog import Catalog  # the project's own model, as the workers parse it

    pod = worker["spec"]["template"]["spec"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            data = build.config_maps[volume["configMap"]["name"]].get("data", {})
            if "models.toml" in data:
                return Catalog.model_validate(tomllib.loads(data["models.toml"]))
    return None

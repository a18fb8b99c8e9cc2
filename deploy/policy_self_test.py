"""The production policy's self-test: each policy must catch the breakage it is there for.

Run by deploy/check_manifests.py on the gpu builds: it breaks the build in one place at a time
(a save line in redis.conf, an old driver, no storage class…) and expects the policy's complaint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from manifests import SERVICE_ACCOUNT_DIR, Doc
from policy import DRIVER_LABEL

# The self-test: each breakage, and a word the policy's complaint must contain. ---------------

Mutation = Callable[[list[Doc]], None]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _pod(docs: list[Doc], kind: str, name: str) -> Doc:
    pod: Doc = _find(docs, kind, name)["spec"]["template"]["spec"]
    return pod


def _container(docs: list[Doc], kind: str, name: str) -> Doc:
    container: Doc = _pod(docs, kind, name)["containers"][0]
    return container


def _redis_conf(docs: list[Doc]) -> Doc:
    return next(d for d in docs if d["kind"] == "ConfigMap" and "redis.conf" in d.get("data", {}))


def _env(container: Doc, name: str, value: str) -> None:
    container["env"] = [v for v in container.get("env", []) if v["name"] != name]
    container["env"].append({"name": name, "value": value})


def _config(docs: list[Doc], key: str, value: str | None) -> None:
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "DARKROOM_STORAGE" in d["data"])
    if value is None:
        config["data"].pop(key, None)
    else:
        config["data"][key] = value


def _driver_terms(docs: list[Doc]) -> list[Doc]:
    affinity = _pod(docs, "Deployment", "gpu-worker")["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    expressions: list[Doc] = terms[0]["matchExpressions"]
    return expressions


def _set_driver(docs: list[Doc], value: str) -> None:
    for expression in _driver_terms(docs):
        if expression["key"] == DRIVER_LABEL:
            expression["values"] = [value]


def _drop_upper_bound(docs: list[Doc]) -> None:
    expressions = _driver_terms(docs)
    expressions[:] = [e for e in expressions if e["operator"] != "Lt"]


def _edit_catalog(docs: list[Doc], old: str, new: str) -> None:
    data = next(c for c in docs if c["kind"] == "ConfigMap" and "models.toml" in c.get("data", {}))
    data["data"]["models.toml"] = data["data"]["models.toml"].replace(old, new)


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "an RDB save line": (
        lambda d: _redis_conf(d)["data"].update(
            {"redis.conf": _redis_conf(d)["data"]["redis.conf"] + "save 900 1\n"}
        ),
        'save ""',
    ),
    "maxmemory near the limit": (
        lambda d: _env(_container(d, "StatefulSet", "redis"), "REDIS_MAXMEMORY", "3gb"),
        "of the memory limit",
    ),
    "Burstable Redis": (
        lambda d: _container(d, "StatefulSet", "redis")["resources"]["requests"].update(
            {"memory": "1Gi"}
        ),
        "Guaranteed",
    ),
    "an input cap past maxmemory": (
        lambda d: _config(d, "DARKROOM_MAX_WAITING_INPUT_BYTES", str(4 * 2**30)),
        "DARKROOM_MAX_WAITING_INPUT_BYTES",
    ),
    "no storage class": (
        lambda d: _find(d, "PersistentVolumeClaim", "hf-cache")["spec"].pop("storageClassName"),
        "storageClassName",
    ),
    "a driver too old for uv.lock's CUDA": (lambda d: _set_driver(d, "534"), DRIVER_LABEL),
    "overlapping GPU pools": (_drop_upper_bound, "overlap"),
    "the default eviction policy": (
        lambda d: _find(d, "PodDisruptionBudget", "gateway")["spec"].pop(
            "unhealthyPodEvictionPolicy"
        ),
        "AlwaysAllow",
    ),
    "the default ServiceAccount": (
        lambda d: _pod(d, "Deployment", "uploader").pop("serviceAccountName"),
        "ServiceAccount",
    ),
    "no scrape rule": (
        lambda d: d.remove(_find(d, "NetworkPolicy", "darkroom-allow-metrics")),
        "/metrics",
    ),
    "the gateway's metrics port closed to monitoring": (
        lambda d: _find(d, "NetworkPolicy", "darkroom-allow-metrics")["spec"]["podSelector"][
            "matchExpressions"
        ][0]["values"].remove("api"),
        "/metrics on 8081",
    ),
    "imagePullPolicy Always": (
        lambda d: _container(d, "Deployment", "gpu-worker").update({"imagePullPolicy": "Always"}),
        "IfNotPresent",
    ),
    "workers on the hub": (
        lambda d: _env(_container(d, "Deployment", "gpu-worker"), "HF_HUB_OFFLINE", "0"),
        "HF_HUB_OFFLINE",
    ),
    "an optional hub token": (
        lambda d: next(
            v for v in _pod(d, "Job", "model-prefetch")["volumes"] if v["name"] == "credentials"
        )["secret"].update({"optional": True}),
        "gated",
    ),
    "egress to private ranges": (
        lambda d: next(
            r
            for r in _find(d, "NetworkPolicy", "uploader")["spec"]["egress"]
            if r.get("to") and "ipBlock" in r["to"][0]
        )["to"][0]["ipBlock"].pop("except"),
        "must except",
    ),
    "webhooks to the CGNAT range": (
        lambda d: next(
            r
            for r in _find(d, "NetworkPolicy", "notifier")["spec"]["egress"]
            if r.get("to") and "ipBlock" in r["to"][0]
        )["to"][0]["ipBlock"]["except"].remove("100.64.0.0/10"),
        "lets webhooks reach",
    ),
    "unsigned result URLs": (lambda d: _config(d, "DARKROOM_S3_PRESIGN", "false"), "unsigned"),
    "the generic bucket": (lambda d: _config(d, "S3_BUCKET_NAME", None), "S3_BUCKET_NAME"),
    "one job per worker for a batching route": (
        lambda d: _find(d, "ScaledObject", "gpu-worker")["spec"]["advanced"][
            "scalingModifiers"
        ].update({"formula": "sd + sdxl / 4 + flux + ltx"}),
        "max_batch",
    ),
    "workers' API server rule open to the internet": (
        lambda d: _find(d, "NetworkPolicy", "worker-kube-api")["spec"]["egress"][0]["to"][0][
            "ipBlock"
        ].update({"cidr": "0.0.0.0/0"}),
        "out of the cluster",
    ),
    "no way to the API server": (
        lambda d: d.remove(_find(d, "NetworkPolicy", "worker-kube-api")),
        "reach the API server",
    ),
    "a worker that does not know its pod": (
        lambda d: _container(d, "Deployment", "gpu-worker")["env"].remove(
            next(
                v
                for v in _container(d, "Deployment", "gpu-worker")["env"]
                if v["name"] == "POD_NAME"
            )
        ),
        "POD_NAME",
    ),
    "no token for the API server": (
        lambda d: _container(d, "Deployment", "gpu-worker")["volumeMounts"].remove(
            next(
                m
                for m in _container(d, "Deployment", "gpu-worker")["volumeMounts"]
                if m["mountPath"] == SERVICE_ACCOUNT_DIR
            )
        ),
        "projected ServiceAccount token",
    ),
    "no RoleBinding": (
        lambda d: d.remove(_find(d, "RoleBinding", "gpu-worker")),
        "lets it patch pods",
    ),
    "a Role past patching pods": (
        lambda d: _find(d, "Role", "gpu-worker")["rules"][0].update({"verbs": ["*"]}),
        "more than patch",
    ),
    "a render limit past the drain grace": (
        lambda d: _edit_catalog(d, "[routes.ltx]\n", "[routes.ltx]\nmax_render_s = 3600\n"),
        "max_render_s",
    ),
    "a small gateway /tmp": (
        lambda d: next(
            v for v in _pod(d, "Deployment", "gateway")["volumes"] if v["name"] == "tmp"
        )["emptyDir"].update({"sizeLimit": "256Mi"}),
        "uploads in progress",
    ),
}


def self_test(docs: list[Doc], run: Callable[[list[Doc]], list[str]]) -> list[str]:
    """Break the build one way at a time; ``run`` (every check of check_manifests) must notice."""
    baseline = set(run(docs))
    failures = []
    for name, (mutate, word) in MUTATIONS.items():
        broken = copy.deepcopy(docs)
        mutate(broken)
        new = [p for p in run(broken) if p not in baseline]
        if not any(word in problem for problem in new):
            failures.append(f"self-test: {name} went unnoticed (expected {word!r} in {new})")
    return failures

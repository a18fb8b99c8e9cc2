"""Reading a built overlay: its objects by kind and name, its pods, their containers' environment,
Kubernetes and Redis quantities, label selectors, and the NetworkPolicies and mounts of a pod.

Shared by the production policy (deploy/policy/) and its self-test (deploy/policy_self_test.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

# GPU Feature Discovery labels the node with its GPUs' memory (MiB).
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
POD_KINDS = {"Deployment", "StatefulSet", "Job"}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

K8S_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
REDIS_UNITS = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}


@dataclass
class Build:
    """One rendered overlay, indexed the ways the policies read it."""

    docs: list[Doc]
    release: bool = False
    config_maps: dict[str, Doc] = field(init=False)

    def __post_init__(self) -> None:
        self.config_maps = {d["metadata"]["name"]: d for d in self.of("ConfigMap")}

    def of(self, *kinds: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] in kinds]

    def named(self, kind: str, name: str) -> Doc | None:
        return next((d for d in self.of(kind) if d["metadata"]["name"] == name), None)

    def pods(self) -> Iterator[tuple[Doc, Doc]]:
        """(workload, pod spec) for every Deployment, StatefulSet and Job."""
        for doc in self.of(*POD_KINDS):
            yield doc, doc["spec"]["template"]["spec"]

    def env(self, container: Doc) -> dict[str, str | None]:
        env: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None:
                env.update(self.config_maps[ref["name"]].get("data", {}))
        for var in container.get("env", []):
            env[var["name"]] = var.get("value") if "valueFrom" not in var else None
        return env


def where(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def all_containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def role(container: Doc) -> str:
    return str((container.get("args") or [""])[0])


def template_labels(doc: Doc) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"].get("labels", {}))


def k8s_bytes(quantity: str | int) -> float:
    text = str(quantity)
    for suffix, factor in K8S_UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def cpu_millis(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def redis_bytes(text: str) -> float:
    lowered = text.lower()
    for suffix in sorted(REDIS_UNITS, key=len, reverse=True):
        if lowered.endswith(suffix):
            return float(lowered[: -len(suffix)]) * REDIS_UNITS[suffix]
    return float(lowered)


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def policies_for(build: Build, labels: dict[str, str], policy_type: str) -> list[Doc]:
    return [
        p
        for p in build.of("NetworkPolicy")
        if policy_type in p["spec"].get("policyTypes", [])
        and selects(p["spec"]["podSelector"], labels)
    ]


def kube_api_mounted(pod: Doc, container: Doc) -> bool:
    """A projected ServiceAccount token and the cluster CA, mounted where the worker reads them."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    sources = (
        volumes.get(mounts.get(SERVICE_ACCOUNT_DIR, ""), {}).get("projected", {}).get("sources", [])
    )
    token = any(s.get("serviceAccountToken", {}).get("path") == "token" for s in sources)
    ca = any(
        s.get("configMap", {}).get("name") == "kube-root-ca.crt"
        and {"key": "ca.crt", "path": "ca.crt"} in s["configMap"].get("items", [])
        for s in sources
    )
    return token and ca


def rule_allows_port(rule: Doc, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


def gpu_memory_range(expressions: list[Doc]) -> tuple[float, float]:
    low, high = 0.0, float("inf")
    for expression in expressions:
        if expression["key"] == GPU_MEMORY_LABEL:
            value = float(expression["values"][0])
            if expression["operator"] == "Gt":
                low = max(low, value)
            elif expression["operator"] == "Lt":
                high = min(high, value)
    return low, high


def token_mounted(pod: Doc, env: dict[str, str | None]) -> bool:
    """HF_TOKEN_PATH names a file of a required Secret volume that holds HF_TOKEN."""
    path = Path(env.get("HF_TOKEN_PATH") or "/nonexistent/HF_TOKEN")
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secret = volumes.get(mounts.get(str(path.parent), ""), {}).get("secret")
    if secret is None or secret.get("optional"):
        return False
    items = secret.get("items")
    return items is None or {"key": "HF_TOKEN", "path": path.name} in items

"""Production policy over a built overlay: what a first rollout on a managed cluster needs.

Imported by deploy/check_manifests.py, which runs ``check_policy`` on every build and
``self_test`` on the gpu builds: each policy must catch the breakage it is there for, so the
self-test breaks the build in one place at a time (a save line in redis.conf, an old driver, no
storage class…) and expects the policy's complaint.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[1]

# The NVIDIA driver each CUDA major version needs (CUDA's minor version compatibility: any
# 12.x runs on driver 525+, any 13.x on 580+). GPU Feature Discovery labels the node with the
# driver's major version.
MIN_DRIVER_BY_CUDA = {12: 525, 13: 580}
DRIVER_LABEL = "nvidia.com/cuda.driver-version.major"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_RESOURCE = "nvidia.com/gpu"
# maxmemory at most this share of Redis's memory limit: the rest is for the AOF rewrite child's
# copy-on-write pages, allocator fragmentation and client buffers.
MAX_REDIS_MEMORY_RATIO = 0.6
# Input images waiting in Redis may take at most this share of maxmemory (the rest: queued
# records, rendered outputs on their way to storage, finished records for TASK_TTL).
MAX_INPUT_SHARE = 0.5
DEFAULT_MAX_WAITING_INPUT_BYTES = 512 * 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
# Container logs count against a pod's ephemeral storage beside its emptyDirs.
LOG_ALLOWANCE_BYTES = 64 * 1024 * 1024
# Hub repositories that need a token of an account that accepted their licence.
GATED_HUB_IDS = {"black-forest-labs/FLUX.1-dev"}
# Egress to "anywhere" leaves out the private and link-local ranges (nodes, pods, services,
# cloud metadata): an ipBlock of 0.0.0.0/0 must except at least these.
PRIVATE_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
PRIVATE_V6 = {"fc00::/7", "fe80::/10"}
# Webhook URLs are the tenants' to choose: the notifier's way out also leaves out shared (CGNAT,
# some clusters' pod range) and loopback addresses, as its own SSRF guard does.
WEBHOOK_EXCEPT = {
    "0.0.0.0/0": PRIVATE_V4 | {"100.64.0.0/10", "127.0.0.0/8"},
    "::/0": PRIVATE_V6 | {"::1/128"},
}
POD_KINDS = {"Deployment", "StatefulSet", "Job"}
# Workers reach the API server (their pods' deletion cost) and nothing else outside the
# cluster: an ipBlock no wider than this, on the API server's ports only.
KUBE_API_PORTS = {443, 6443}
MAX_KUBE_API_PREFIX = {4: 16, 6: 48}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
FALSE_WORDS = {"false", "0", "no", "off"}

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


class Policy:
    """Collects the problems of one build."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.problems: list[str] = []

    def add(self, where_: str, message: str) -> None:
        self.problems.append(f"{where_}: {message}")

    # Redis -------------------------------------------------------------------------------

    def redis(self) -> None:
        """AOF only, maxmemory within its share of a Guaranteed pod, shutdown inside its grace."""
        redis = self.build.named("StatefulSet", "redis")
        if redis is None:
            return  # a managed Redis (REDIS_URL): its memory is the provider's
        pod = redis["spec"]["template"]["spec"]
        conf = self._redis_conf(pod)
        lines = [line.split("#")[0].strip() for line in conf.splitlines()]
        directives = [shlex.split(line) for line in lines if line]
        saves = [d[1:] for d in directives if d[0] == "save"]
        if saves != [[""]]:
            self.add(where(redis), f'redis.conf must say save "" (AOF only), not {saves}')
        if ["appendonly", "yes"] not in directives:
            self.add(where(redis), "redis.conf must say appendonly yes")
        if ["maxmemory-policy", "noeviction"] not in directives:
            self.add(where(redis), "redis.conf must say maxmemory-policy noeviction")
        timeouts = [float(d[1]) for d in directives if d[0] == "shutdown-timeout"]
        shutdown_s = timeouts[-1] if timeouts else 10.0
        grace_s = pod.get("terminationGracePeriodSeconds", 30)
        if grace_s < shutdown_s + 20:
            self.add(
                where(redis),
                f"terminationGracePeriodSeconds {grace_s} is not well past "
                f"shutdown-timeout {shutdown_s:g} s (20 s margin)",
            )
        container = pod["containers"][0]
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource, parse in (("cpu", cpu_millis), ("memory", k8s_bytes)):
            if resource not in limits or parse(requests.get(resource, "0")) != parse(
                limits[resource]
            ):
                self.add(where(redis), f"{resource} requests must equal limits (Guaranteed QoS)")
        maxmemory = self.build.env(container).get("REDIS_MAXMEMORY")
        if not maxmemory or "memory" not in limits:
            self.add(where(redis), "needs REDIS_MAXMEMORY and a memory limit")
            return
        ratio = redis_bytes(maxmemory) / k8s_bytes(limits["memory"])
        if ratio > MAX_REDIS_MEMORY_RATIO:
            self.add(
                where(redis),
                f"maxmemory {maxmemory} is {ratio:.0%} of the memory limit "
                f"{limits['memory']}; at most {MAX_REDIS_MEMORY_RATIO:.0%}",
            )
        self._priority(redis, pod)
        self._waiting_inputs(redis_bytes(maxmemory))

    def _redis_conf(self, pod: Doc) -> str:
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                data = self.build.config_maps[volume["configMap"]["name"]].get("data", {})
                if "redis.conf" in data:
                    return str(data["redis.conf"])
        return ""

    def _priority(self, redis: Doc, pod: Doc) -> None:
        name = pod.get("priorityClassName")
        if not name or self.build.named("PriorityClass", name) is None:
            self.add(where(redis), "needs a PriorityClass of this build (priorityClassName)")

    def _waiting_inputs(self, maxmemory_bytes: float) -> None:
        """The gateway's cap on input images, in Redis bytes, within its share of maxmemory."""
        measured = json.loads((REPO / "bench/results/redis_memory.json").read_text())["queued"]
        redis_per_byte = measured["bytes_per_queued_i2i_job"] / measured["input_image_bytes"]
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "gateway":
                    continue
                env = self.build.env(container)
                cap = int(
                    env.get("DARKROOM_MAX_WAITING_INPUT_BYTES") or DEFAULT_MAX_WAITING_INPUT_BYTES
                )
                held = cap * redis_per_byte
                if held > maxmemory_bytes * MAX_INPUT_SHARE:
                    self.add(
                        where(doc),
                        f"DARKROOM_MAX_WAITING_INPUT_BYTES {cap} holds about "
                        f"{held / 2**20:.0f} MiB of Redis, over "
                        f"{MAX_INPUT_SHARE:.0%} of maxmemory",
                    )

    # GPUs --------------------------------------------------------------------------------

    def gpu_nodes(self) -> None:
        """Workers only on drivers that run uv.lock's CUDA, pools on disjoint GPU sizes."""
        cuda = lockfile_cuda_major()
        ranges: list[tuple[float, float, str]] = []
        for doc, pod in self.build.pods():
            if not any(
                GPU_RESOURCE in c.get("resources", {}).get("limits", {}) for c in pod["containers"]
            ):
                continue
            terms = (
                pod.get("affinity", {})
                .get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {})
                .get("nodeSelectorTerms", [])
            )
            if not terms:
                self.add(where(doc), "requests a GPU without required node affinity")
                continue
            for term in terms:
                expressions = term.get("matchExpressions", [])
                if cuda is not None:
                    self._driver(doc, expressions, cuda)
                low, high = gpu_memory_range(expressions)
                if low == 0:
                    self.add(where(doc), f"node term without a {GPU_MEMORY_LABEL} lower bound")
                ranges.append((low, high, doc["metadata"]["name"]))
        ranges.sort()
        for (low_a, high_a, a), (low_b, high_b, b) in zip(ranges, ranges[1:], strict=False):
            if a != b and low_b < high_a:
                self.add(
                    f"{a}, {b}",
                    f"GPU memory ranges overlap ({low_a:g}-{high_a:g} and "
                    f"{low_b:g}-{high_b:g} MiB): a pool takes the nodes "
                    "only the other fits on",
                )

    def _driver(self, doc: Doc, expressions: list[Doc], cuda: int) -> None:
        needed = MIN_DRIVER_BY_CUDA.get(cuda)
        if needed is None:
            self.add(
                where(doc),
                f"uv.lock's torch is built for CUDA {cuda}: add its minimum "
                "driver to MIN_DRIVER_BY_CUDA",
            )
            return
        found = [e for e in expressions if e["key"] == DRIVER_LABEL]
        wanted = {"key": DRIVER_LABEL, "operator": "Gt", "values": [str(needed - 1)]}
        if found != [wanted]:
            self.add(
                where(doc),
                f"uv.lock's torch needs CUDA {cuda}, driver {needed}+: every "
                f"node term needs {DRIVER_LABEL} Gt {needed - 1}, has {found}",
            )

    # Storage, models -----------------------------------------------------------------------

    def storage(self) -> None:
        """A shared claim names its class; workers read weights offline from a prefetched cache."""
        for claim in self.build.of("PersistentVolumeClaim"):
            if "ReadWriteMany" in claim["spec"].get("accessModes", []) and not claim["spec"].get(
                "storageClassName"
            ):
                self.add(
                    where(claim),
                    "ReadWriteMany needs a storageClassName (set "
                    "MODEL_CACHE_STORAGE_CLASS in site.env): the clouds' "
                    "default classes are ReadWriteOnce",
                )
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "worker":
                    continue
                if self.build.env(container).get("HF_HUB_OFFLINE") != "1":
                    self.add(where(doc), "workers must run with HF_HUB_OFFLINE=1")
                self._worker_egress(doc)
                self._render_limits(doc, container)
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
                self._prefetch(doc, claims)

    def _worker_egress(self, doc: Doc) -> None:
        for policy in policies_for(self.build, template_labels(doc), "Egress"):
            for rule in policy["spec"].get("egress", []):
                ports = {p.get("port") for p in rule.get("ports", [])}
                to_pods_only = bool(rule.get("to")) and all(
                    set(peer) == {"podSelector"} for peer in rule["to"]
                )
                if not to_pods_only and ports != {53} and not kube_api_rule(rule):
                    self.add(
                        where(doc),
                        f"NetworkPolicy/{policy['metadata']['name']} lets "
                        "workers out of the cluster: weights come from the "
                        "prefetched cache, and only the API server "
                        f"(an ipBlock of /{MAX_KUBE_API_PREFIX[4]} at most, "
                        f"ports {sorted(KUBE_API_PORTS)}) may be reached",
                    )

    def _render_limits(self, doc: Doc, container: Doc) -> None:
        """A drain (SIGTERM) never cuts short a render its route allows: the pool's drain grace
        covers the max_render_s of every route it serves."""
        catalog = self._catalog(doc)
        if catalog is None:
            return
        env = self.build.env(container)
        served = [r for r in (env.get("DARKROOM_ROUTES") or "").split(",") if r.strip()]
        grace_s = float(env.get("DARKROOM_DRAIN_GRACE_S") or 60)
        for name, route in catalog.routes.items():
            if served and name not in served:
                continue
            if route.max_render_s is not None and route.max_render_s > grace_s:
                self.add(
                    where(doc),
                    f"route {name}: max_render_s {route.max_render_s:g} is past the drain "
                    f"grace of {grace_s:g} s (DARKROOM_DRAIN_GRACE_S)",
                )

    def _prefetch(self, worker: Doc, claims: set[str]) -> None:
        jobs = [
            (job, pod)
            for job, pod in self.build.pods()
            if job["kind"] == "Job"
            and claims
            & {
                v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
        ]
        if not jobs:
            self.add(where(worker), f"no Job fills its model cache {sorted(claims)}")
            return
        catalog = self._catalog(worker)
        gated = {r.weights for r in catalog.routes.values()} & GATED_HUB_IDS if catalog else set()
        for job, pod in jobs:
            if not any(
                rule_allows_port(rule, 443)
                for policy in policies_for(self.build, template_labels(job), "Egress")
                for rule in policy["spec"].get("egress", [])
            ):
                self.add(where(job), "no NetworkPolicy lets it reach the hub (443)")
            if gated and not token_mounted(pod, self.build.env(pod["containers"][0])):
                self.add(
                    where(job),
                    f"{sorted(gated)} are gated: mount HF_TOKEN from a "
                    "Secret that is not optional and set HF_TOKEN_PATH to it",
                )

    def _catalog(self, worker: Doc) -> Any:
        from common.catalog import Catalog  # the project's own model, as the workers parse it

        pod = worker["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                data = self.build.config_maps[volume["configMap"]["name"]].get("data", {})
                if "models.toml" in data:
                    return Catalog.model_validate(tomllib.loads(data["models.toml"]))
        return None

    # Disruption, identity, network ---------------------------------------------------------

    def disruption(self) -> None:
        for budget in self.build.of("PodDisruptionBudget"):
            if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
                self.add(
                    where(budget),
                    "needs unhealthyPodEvictionPolicy: AlwaysAllow, or an "
                    "unready pod (Redis down) blocks every drain",
                )

    def identity(self) -> None:
        accounts = {a["metadata"]["name"] for a in self.build.of("ServiceAccount")}
        users: dict[str, list[str]] = {}
        for doc, pod in self.build.pods():
            name = pod.get("serviceAccountName", "default")
            users.setdefault(name, []).append(doc["metadata"]["name"])
            if name == "default" or name not in accounts:
                self.add(where(doc), f"needs its own ServiceAccount of this build, not {name!r}")
            if pod.get("automountServiceAccountToken") is not False:
                self.add(where(doc), "automountServiceAccountToken must be false")
        for doc, pod in self.build.pods():
            if any(role(c) == "uploader" for c in pod["containers"]):
                name = pod.get("serviceAccountName", "default")
                if users.get(name) != [doc["metadata"]["name"]]:
                    self.add(
                        where(doc),
                        f"ServiceAccount {name} is shared with {users.get(name)}"
                        ": the storage identity is the uploader's alone",
                    )

    def scale_in(self) -> None:
        """Workers mark their pods busy or idle (pod-deletion-cost): they know their pod, hold
        a token and CA, may patch pods and nothing more, and reach the API server."""
        roles = {r["metadata"]["name"]: r for r in self.build.of("Role")}
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "worker" or doc["kind"] != "Deployment":
                    continue
                env = self.build.env(container)
                if str(env.get("DARKROOM_POD_DELETION_COST", "true")).lower() in FALSE_WORDS:
                    continue
                fields = {
                    v["name"]: v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                    for v in container.get("env", [])
                }
                for name, path in (
                    ("POD_NAME", "metadata.name"),
                    ("POD_NAMESPACE", "metadata.namespace"),
                ):
                    if fields.get(name) != path:
                        self.add(where(doc), f"pod-deletion-cost: {name} must come from {path}")
                if not kube_api_mounted(pod, container):
                    self.add(
                        where(doc),
                        "pod-deletion-cost: mount a projected ServiceAccount token and "
                        f"kube-root-ca.crt at {SERVICE_ACCOUNT_DIR}",
                    )
                account = pod.get("serviceAccountName", "default")
                granted = [
                    rule
                    for binding in self.build.of("RoleBinding")
                    if binding["roleRef"]["kind"] == "Role"
                    and any(
                        s["kind"] == "ServiceAccount" and s["name"] == account
                        for s in binding.get("subjects", [])
                    )
                    for rule in roles.get(binding["roleRef"]["name"], {}).get("rules", [])
                ]
                if not any(
                    "" in r.get("apiGroups", [])
                    and "pods" in r.get("resources", [])
                    and "patch" in r.get("verbs", [])
                    for r in granted
                ):
                    self.add(
                        where(doc),
                        f"pod-deletion-cost: no Role bound to {account} lets it patch pods",
                    )
                for rule in granted:
                    if (
                        rule.get("apiGroups") != [""]
                        or rule.get("resources") != ["pods"]
                        or not set(rule.get("verbs", [])) <= {"get", "patch"}
                    ):
                        self.add(
                            where(doc),
                            f"ServiceAccount {account} may do more than patch its pod: {rule}",
                        )
                if not any(
                    kube_api_rule(rule)
                    for policy in policies_for(self.build, template_labels(doc), "Egress")
                    for rule in policy["spec"].get("egress", [])
                ):
                    self.add(
                        where(doc),
                        "pod-deletion-cost: no NetworkPolicy lets it reach the API server "
                        "(KUBE_API_CIDR on 443/6443)",
                    )

    def network(self) -> None:
        """/metrics reachable from monitoring; egress to anywhere leaves out private ranges."""
        monitors = self.build.of("PodMonitor")
        for doc, pod in self.build.pods():
            if any(role(c) == "notifier" for c in pod["containers"]):
                self._notifier_egress(doc)
            for container in pod["containers"]:
                env = self.build.env(container)
                # Workers, uploader, notifier: the probe port; gateway, status: the metrics port.
                port = env.get("DARKROOM_HEALTH_PORT") or env.get("DARKROOM_METRICS_PORT")
                if port is None:
                    continue
                labels = template_labels(doc)
                admitted = any(
                    rule_allows_port(rule, int(port))
                    and any("namespaceSelector" in peer for peer in rule.get("from", []))
                    for policy in policies_for(self.build, labels, "Ingress")
                    for rule in policy["spec"].get("ingress", [])
                )
                if not admitted:
                    self.add(
                        where(doc),
                        f"no NetworkPolicy admits the monitoring namespace to /metrics on {port}",
                    )
                names = {
                    p.get("name")
                    for p in container.get("ports", [])
                    if str(p.get("containerPort")) == port
                }
                if monitors and not any(
                    selects(m["spec"]["selector"], labels)
                    and any(e.get("port") in names for e in m["spec"]["podMetricsEndpoints"])
                    for m in monitors
                ):
                    self.add(where(doc), f"no PodMonitor scrapes its /metrics port {port}")
        for policy in self.build.of("NetworkPolicy"):
            for rule in policy["spec"].get("egress", []):
                if not rule.get("to") and {p.get("port") for p in rule.get("ports", [])} != {53}:
                    self.add(where(policy), "egress to any address on a port other than DNS")
                for peer in rule.get("to", []):
                    block = peer.get("ipBlock", {})
                    private = {"0.0.0.0/0": PRIVATE_V4, "::/0": PRIVATE_V6}.get(block.get("cidr"))
                    if private and not private <= set(block.get("except", [])):
                        self.add(
                            where(policy),
                            f"egress to {block['cidr']} must except {sorted(private)}",
                        )

    def _notifier_egress(self, doc: Doc) -> None:
        for policy in policies_for(self.build, template_labels(doc), "Egress"):
            for rule in policy["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    block = peer.get("ipBlock", {})
                    needed = WEBHOOK_EXCEPT.get(block.get("cidr"), set())
                    missing = needed - set(block.get("except", []))
                    if missing:
                        self.add(
                            where(doc),
                            f"NetworkPolicy/{policy['metadata']['name']} lets webhooks reach "
                            f"{sorted(missing)}: except them from {block['cidr']}",
                        )

    # Images, storage of the pods, results -----------------------------------------------------

    def images(self) -> None:
        for doc, pod in self.build.pods():
            for container in all_containers(pod):
                if container.get("imagePullPolicy") != "IfNotPresent":
                    self.add(
                        where(doc),
                        f"{container['name']}: imagePullPolicy must be "
                        "IfNotPresent (images pinned by digest at release)",
                    )
                if self.build.release and "@sha256:" not in container["image"]:
                    self.add(
                        where(doc),
                        f"{container['name']}: {container['image']} is not "
                        "pinned by digest (release)",
                    )

    def ephemeral(self) -> None:
        from gateway.settings import GatewaySettings

        for doc, pod in self.build.pods():
            for container in all_containers(pod):
                resources = container.get("resources", {})
                for kind in ("requests", "limits"):
                    if "ephemeral-storage" not in resources.get(kind, {}):
                        self.add(where(doc), f"{container['name']}: no ephemeral-storage {kind}")
            dirs = {
                v["name"]: k8s_bytes(v["emptyDir"].get("sizeLimit", 0))
                for v in pod.get("volumes", [])
                if v.get("emptyDir") is not None and v["emptyDir"].get("medium") != "Memory"
            }
            limit = sum(
                k8s_bytes(c.get("resources", {}).get("limits", {}).get("ephemeral-storage", 0))
                for c in pod["containers"]
            )
            if sum(dirs.values()) + LOG_ALLOWANCE_BYTES > limit:
                self.add(
                    where(doc),
                    f"ephemeral-storage limits ({limit / 2**20:.0f} MiB) below "
                    "its emptyDirs' sizeLimits plus logs",
                )
            for container in pod["containers"]:
                if role(container) != "gateway" or "tmp" not in dirs:
                    continue
                upload = int(
                    self.build.env(container).get("DARKROOM_MAX_UPLOAD_BYTES")
                    or GatewaySettings.model_fields["max_upload_bytes"].default
                )
                # The gateway refuses uploads past this many at once (parts over 1 MiB spill to
                # /tmp), so /tmp must hold that many of the largest.
                uploads = int(
                    self.build.env(container).get("DARKROOM_MAX_CONCURRENT_UPLOADS")
                    or GatewaySettings.model_fields["max_concurrent_uploads"].default
                )
                needed = uploads * (upload + MULTIPART_OVERHEAD_BYTES)
                if dirs["tmp"] < needed:
                    self.add(
                        where(doc),
                        f"/tmp holds {dirs['tmp'] / 2**20:.0f} MiB, less than "
                        f"{uploads} uploads in progress (DARKROOM_MAX_CONCURRENT_UPLOADS) "
                        f"({needed / 2**20:.0f} MiB)",
                    )

    def results(self) -> None:
        """S3 results: an explicit bucket, and URLs a private bucket answers."""
        from uploader.settings import UploaderSettings

        default_bucket = UploaderSettings.model_fields["s3_bucket_name"].default
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                env = self.build.env(container)
                if role(container) != "uploader" or env.get("DARKROOM_STORAGE") != "s3":
                    continue
                if env.get("S3_BUCKET_NAME") in (None, "", default_bucket):
                    self.add(
                        where(doc),
                        f"S3_BUCKET_NAME must be set by the overlay (not {default_bucket!r})",
                    )
                presign = str(env.get("DARKROOM_S3_PRESIGN", "")).lower() in {"1", "true", "yes"}
                if not presign and not env.get("DARKROOM_S3_PUBLIC_BASE_URL"):
                    self.add(
                        where(doc),
                        "result URLs would be unsigned: set DARKROOM_S3_PRESIGN"
                        "=true or DARKROOM_S3_PUBLIC_BASE_URL",
                    )

    def routes(self) -> None:
        """Gateway API: the SSE routes have no request timeout."""
        for route in self.build.of("HTTPRoute"):
            for rule in route["spec"]["rules"]:
                names = {ref["name"] for ref in rule.get("backendRefs", [])}
                timeout = rule.get("timeouts", {}).get("request")
                if names & {"status", "gateway"} and timeout != "0s":
                    self.add(
                        where(route),
                        f"the rule to {sorted(names)} serves SSE feeds: "
                        'timeouts.request must be "0s"',
                    )


def kube_api_rule(rule: Doc) -> bool:
    """An egress rule to the API server alone: narrow ipBlocks, its ports only."""
    ports = {p.get("port") for p in rule.get("ports", [])}
    peers = rule.get("to", [])
    if not peers or not ports or not ports <= KUBE_API_PORTS:
        return False
    for peer in peers:
        if set(peer) != {"ipBlock"} or "except" in peer["ipBlock"]:
            return False
        try:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
        except ValueError:
            return False
        if network.prefixlen < MAX_KUBE_API_PREFIX[network.version]:
            return False
    return True


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


def lockfile_cuda_major() -> int | None:
    """The CUDA major version uv.lock's torch is built for (None: a CPU-only torch)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    torch = packages.get("torch")
    if torch is None:
        return None
    majors: set[int] = set()
    for dependency in torch.get("dependencies", []):
        name = dependency["name"]
        if match := re.fullmatch(r"nvidia-.+-cu(\d+)", name):
            majors.add(int(match.group(1)))
        elif name == "cuda-toolkit":
            majors.add(int(packages[name]["version"].split(".")[0]))
    if len(majors) > 1:
        raise ValueError(f"uv.lock's torch names several CUDA versions: {sorted(majors)}")
    return majors.pop() if majors else None


def check_policy(docs: list[Doc], release: bool = False) -> list[str]:
    policy = Policy(Build(docs, release))
    for check in (
        policy.redis,
        policy.gpu_nodes,
        policy.storage,
        policy.disruption,
        policy.identity,
        policy.scale_in,
        policy.network,
        policy.images,
        policy.ephemeral,
        policy.results,
        policy.routes,
    ):
        check()
    return list(dict.fromkeys(policy.problems))  # once each, though several pools share a cause


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
